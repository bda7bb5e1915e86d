#include "fluxbatch/models/vae/vae_decoder.h"

#include "fluxbatch/core/error.h"
#include "models/vae/vae_blocks.h"

namespace fluxbatch::models::vae {

std::vector<std::string> vae_ignored_prefixes(bool use_post_quant_conv) {
  std::vector<std::string> prefixes = {"encoder.", "quant_conv."};
  if (!use_post_quant_conv) prefixes.push_back("post_quant_conv.");
  return prefixes;
}

at::Tensor unscale_latents(const at::Tensor& latents, const VaeConfig& config) {
  return latents / config.scaling_factor + config.shift_factor;
}

VaeDecoderImpl::VaeDecoderImpl(const VaeConfig& config, const at::TensorOptions& options, bool use_post_quant_conv)
    : config_(config) {
  FLUXBATCH_CHECK(!config.block_out_channels.empty() && config.norm_num_groups > 0 && config.layers_per_block >= 0,
                  ModelError, "VAE: block_out_channels must be non-empty and norm_num_groups positive");
  for (int64_t channels : config.block_out_channels) {
    FLUXBATCH_CHECK(channels % config.norm_num_groups == 0, ModelError,
                    "VAE: block_out_channels " + std::to_string(channels) + " is not divisible by norm_num_groups " +
                        std::to_string(config.norm_num_groups));
  }
  if (use_post_quant_conv) {
    post_quant_conv_ = register_module(
        "post_quant_conv", layers::Conv2d(config.latent_channels, config.latent_channels, 1, 0, options));
  }
  decoder_ = register_module("decoder", std::make_shared<DecoderImpl>(config, options));
}

at::Tensor VaeDecoderImpl::decode(const at::Tensor& latents) {
  FLUXBATCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels, InputError,
                  "VAE: latents must be [batch, " + std::to_string(config_.latent_channels) + ", h, w]");
  return decoder_->forward(post_quant_conv_ ? post_quant_conv_->forward(latents) : latents);  // [B, out, 8h, 8w]
}

}  // namespace fluxbatch::models::vae
