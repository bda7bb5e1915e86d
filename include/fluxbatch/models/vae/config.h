// AutoencoderKL (decoder half) hyper-parameters; defaults are the FLUX.1 VAE (vae/config.json).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::models::vae {

struct VaeConfig {
  int64_t latent_channels = 16;
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  bool mid_block_add_attention = true;
  double scaling_factor = 0.3611;
  double shift_factor = 0.1159;

  int64_t scale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }  // 8
  void validate(const std::string& origin) const;
  static VaeConfig from_json_file(const std::string& path);  // diffusers vae/config.json
};

}  // namespace fluxbatch::models::vae
