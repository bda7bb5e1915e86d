// The decoder half of diffusers' AutoencoderKL (diffusers 0.42.1 semantics). Registered names are
// the diffusers checkpoint keys under `decoder.` (conv_in, mid_block.{resnets.0, attentions.0.
// {group_norm,to_q,to_k,to_v,to_out.0}, resnets.1}, up_blocks.N.{resnets.K.{norm1,conv1,norm2,conv2,
// conv_shortcut}, upsamplers.0.conv}, conv_norm_out, conv_out) plus `post_quant_conv` when the
// config uses it (FLUX's does not). The encoder half of the file is ignored (vae_ignored_prefixes).
#pragma once
#include "fluxbatch/models/vae/config.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

namespace fluxbatch::models::layers {
class Conv2dImpl;
}

namespace fluxbatch::models::vae {

class DecoderImpl;

// Checkpoint keys of an AutoencoderKL file that decoding does not use.
std::vector<std::string> vae_ignored_prefixes(bool use_post_quant_conv = false);

// FluxPipeline's `latents / scaling_factor + shift_factor`: two ops with scalar operands, so the
// rounding in bf16 is the pipeline's. latents: [B, C, h, w] -> [B, C, h, w]
at::Tensor unscale_latents(const at::Tensor& latents, const VaeConfig& config);

// AutoencoderKL.tiled_decode parameters: tiles of tile_sample_size pixels (vae/config.json
// sample_size; 1024 for FLUX), neighbours overlapping by overlap_factor and linearly blended.
struct TiledDecodeOptions {
  int64_t tile_sample_size = 1024;
  double overlap_factor = 0.25;
};

class VaeDecoderImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); load them afterwards.
  explicit VaeDecoderImpl(const VaeConfig& config, const at::TensorOptions& options = at::kFloat,
                          bool use_post_quant_conv = false);

  // latents (already unscaled): [B, latent_channels, h, w] -> [B, out_channels, 8h, 8w]
  at::Tensor decode(const at::Tensor& latents);
  at::Tensor forward(const at::Tensor& latents) { return decode(latents); }

  // decode() with AutoencoderKL tiling enabled: latents that fit one tile decode as a whole, larger
  // ones go through tiled_decode (overlapping tiles, seams blended linearly). Same output shape as
  // decode(); equal to it only approximately (each tile sees less context).
  at::Tensor decode_tiled(const at::Tensor& latents, const TiledDecodeOptions& options = {});

  const VaeConfig& config() const { return config_; }

 private:
  at::Tensor decode_tile(const at::Tensor& latents);
  VaeConfig config_;
  std::shared_ptr<layers::Conv2dImpl> post_quant_conv_;
  std::shared_ptr<DecoderImpl> decoder_;
};
TORCH_MODULE(VaeDecoder);

}  // namespace fluxbatch::models::vae
