// FLUX transformer hyper-parameters; defaults are FLUX.1-dev (diffusers transformer/config.json).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::models::flux {

struct FluxConfig {
  int64_t patch_size = 1;
  int64_t in_channels = 64;
  int64_t out_channels = 64;
  int64_t num_layers = 19;          // double-stream blocks
  int64_t num_single_layers = 38;   // single-stream blocks
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;   // T5 d_model
  int64_t pooled_projection_dim = 768;  // CLIP hidden size
  bool guidance_embeds = true;          // dev: true, schnell: false
  std::vector<int64_t> axes_dims_rope = {16, 56, 56};

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // Throws ModelError when inconsistent (e.g. sum(axes_dims_rope) != attention_head_dim).
  void validate(const std::string& origin) const;
  // Reads a diffusers transformer/config.json; unknown keys are ignored, bad values are errors.
  static FluxConfig from_json_file(const std::string& path);
};

}  // namespace fluxbatch::models::flux
