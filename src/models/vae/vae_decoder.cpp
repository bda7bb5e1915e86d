#include "fluxbatch/models/vae/vae_decoder.h"

#include "fluxbatch/core/error.h"
#include "models/vae/vae_blocks.h"

namespace fluxbatch::models::vae {
namespace {

// AutoencoderKL.blend_v / blend_h: in place on `b`, like diffusers (the blended tile is what the
// next row / column blends against).
void blend(const at::Tensor& a, at::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double w = static_cast<double>(y) / static_cast<double>(extent);
    b.select(dim, y).copy_(a.select(dim, a.size(dim) - extent + y) * (1 - w) + b.select(dim, y) * w);
  }
}

}  // namespace

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

at::Tensor VaeDecoderImpl::decode_tile(const at::Tensor& latents) {
  return decoder_->forward(post_quant_conv_ ? post_quant_conv_->forward(latents) : latents);
}

at::Tensor VaeDecoderImpl::decode(const at::Tensor& latents) {
  FLUXBATCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels, InputError,
                  "VAE: latents must be [batch, " + std::to_string(config_.latent_channels) + ", h, w]");
  return decode_tile(latents);  // [B, C, h, w] -> [B, out, 8h, 8w]
}

at::Tensor VaeDecoderImpl::decode_tiled(const at::Tensor& latents, const TiledDecodeOptions& options) {
  FLUXBATCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels, InputError,
                  "VAE: latents must be [batch, " + std::to_string(config_.latent_channels) + ", h, w]");
  const int64_t tile_sample = options.tile_sample_size;
  const auto tile_latent = static_cast<int64_t>(static_cast<double>(tile_sample) / config_.scale_factor());
  const auto overlap = static_cast<int64_t>(tile_latent * (1 - options.overlap_factor));
  const auto blend_extent = static_cast<int64_t>(tile_sample * options.overlap_factor);
  const int64_t row_limit = tile_sample - blend_extent;
  FLUXBATCH_CHECK(overlap > 0 && row_limit > 0, InputError,
                  "VAE tiling: tile_sample_size " + std::to_string(tile_sample) + " with overlap_factor " +
                      std::to_string(options.overlap_factor) + " leaves no stride");

  // AutoencoderKL._decode only tiles latents larger than one tile.
  if (latents.size(2) <= tile_latent && latents.size(3) <= tile_latent) return decode_tile(latents);

  std::vector<std::vector<at::Tensor>> rows;  // decoded tiles [B, out, <=tile_sample, <=tile_sample]
  for (int64_t i = 0; i < latents.size(2); i += overlap) {
    rows.emplace_back();
    for (int64_t j = 0; j < latents.size(3); j += overlap) {
      at::Tensor tile = latents.slice(2, i, i + tile_latent).slice(3, j, j + tile_latent);
      rows.back().push_back(decode_tile(tile));
    }
  }
  std::vector<at::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      at::Tensor& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, 2, blend_extent);
      if (j > 0) blend(rows[i][j - 1], tile, 3, blend_extent);
      result_row.push_back(tile.slice(2, 0, row_limit).slice(3, 0, row_limit));
    }
    result_rows.push_back(at::cat(result_row, 3));
  }
  return at::cat(result_rows, 2);  // [B, out, 8h, 8w]
}

}  // namespace fluxbatch::models::vae
