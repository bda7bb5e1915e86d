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
#include <optional>
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

// The exact tiled decode (decode_exact_tiled): the decoder runs layer by layer over the whole
// feature map, each layer tile by tile, so the device holds the weights, one tile (+ a 1-pixel halo)
// of a layer's input and output, and the mid-block attention's keys and values at latent
// resolution. Every op sees what it sees in decode(): convolutions get their halo from the
// neighbouring tiles (zeros only at the image border), GroupNorm uses statistics gathered over all
// tiles first (fp32 per tile, merged in fp64), the attention runs over the whole latent in query
// chunks. The result equals decode() up to floating-point rounding.
struct ExactTileOptions {
  // Tile edge in output pixels, a positive multiple of the scale factor (8): tile_pixels / 8
  // latents, tile_pixels / 4 at the next resolution, and so on. Larger tiles: fewer, larger copies.
  int64_t tile_pixels = 256;
  // Where the whole feature maps between layers wait when decoding on CUDA: true = host memory
  // (tiles copied through pinned staging buffers; the device holds tiles only), false = the device.
  // On the CPU they are on the CPU either way.
  bool maps_on_host = true;
  // Bytes for one query chunk's attention scores ([chunk, h*w] in fp32, times three for the softmax
  // temporaries of the math backend): the chunk is (attention_chunk_bytes / (12 * h * w)) queries.
  int64_t attention_chunk_bytes = int64_t{256} << 20;
  // Feature maps of at most this many bytes are normalised whole on the device by at::group_norm
  // itself (the map and its normalised copy there at once), bit-identical to decode(); larger ones
  // with the statistics gathered over tiles, which may differ from at::group_norm's in the last bit.
  // That matters most at the mid-block, whose attention spreads a one-ulp difference over the whole
  // image (in bf16, a random VAE turns it into several 8-bit levels); those maps are the smallest.
  int64_t whole_norm_bytes = int64_t{64} << 20;
  // The dtype every layer computes in, the weights cast to it layer by layer (nullopt: the latents'
  // dtype); the result is rounded to the latents' dtype. fp32 by default, with cuDNN's TF32 off while
  // decoding: in bf16 a tile's convolution rounds differently from the whole map's (another shape,
  // another cuDNN algorithm), and the deep decoder amplifies those one-ulp differences into several
  // 8-bit levels (H100, random FLUX.1 VAE at 1024²: 93.8% of values within one level of decode()).
  // In fp32 the tiles stay within rounding of the fp32 whole decode, which is also closer to the
  // exact image than a bf16 decode, tiled or not. On the device it costs one layer's fp32 weights
  // and twice the tile and map bytes (the decode plan counts both).
  std::optional<at::ScalarType> compute = at::kFloat;
};

class VaeDecoderImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); load them afterwards.
  explicit VaeDecoderImpl(const VaeConfig& config, const at::TensorOptions& options = at::kFloat,
                          bool use_post_quant_conv = false);

  // latents (already unscaled): [B, latent_channels, h, w] -> [B, out_channels, 8h, 8w]
  at::Tensor decode(const at::Tensor& latents);
  at::Tensor forward(const at::Tensor& latents) { return decode(latents); }

  // decode() computed tile by tile (ExactTileOptions): the same output up to floating-point
  // rounding, for images whose whole-image activations do not fit the device. InputError for a
  // tile_pixels that is not a positive multiple of the scale factor.
  at::Tensor decode_exact_tiled(const at::Tensor& latents, const ExactTileOptions& options = {});

  const VaeConfig& config() const { return config_; }

 private:
  VaeConfig config_;
  std::shared_ptr<layers::Conv2dImpl> post_quant_conv_;
  std::shared_ptr<DecoderImpl> decoder_;
};
TORCH_MODULE(VaeDecoder);

}  // namespace fluxbatch::models::vae
