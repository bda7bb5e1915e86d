// FLUX latent layout: 2x2 patch packing, position ids and the seeded initial noise, as in
// diffusers' FluxPipeline (_pack_latents, _unpack_latents, _prepare_latent_image_ids, prepare_latents).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

namespace fluxbatch::sampling {

// Unpacked latent grid of an image: 2 * (side / (2 * vae_scale_factor)) per side, like diffusers
// (sides not divisible by 16 are rounded down).
struct LatentSize {
  int64_t height = 0;
  int64_t width = 0;
  int64_t seq_len() const { return (height / 2) * (width / 2); }  // packed tokens
};
LatentSize latent_size(int64_t image_height, int64_t image_width, int64_t vae_scale_factor = 8);

// latents: [B, C, h, w] -> [B, (h/2)(w/2), 4C]; token i*(w/2)+j, feature c*4 + dy*2 + dx.
at::Tensor pack_latents(const at::Tensor& latents);
// packed: [B, (h/2)(w/2), 4C] -> [B, C, h, w].
at::Tensor unpack_latents(const at::Tensor& packed, LatentSize size);

// [(h/2)(w/2), 3]: column 0 zero, column 1 the token row, column 2 the token column.
at::Tensor latent_image_ids(LatentSize size, c10::ScalarType dtype, c10::Device device);
// [seq_len, 3] zeros.
at::Tensor text_ids(int64_t seq_len, c10::ScalarType dtype, c10::Device device);

// Packed initial latents [B, S, 4*channels] for one seed per image: each image is drawn as
// torch.randn((1, channels, h, w), generator=torch.Generator().manual_seed(seed), dtype=dtype) on
// the CPU, so an image's noise equals diffusers' with a list of CPU generators and never depends
// on the rest of the batch. The result is moved to `device`.
at::Tensor initial_noise(const std::vector<uint64_t>& seeds, int64_t channels, LatentSize size,
                         c10::ScalarType dtype, c10::Device device);

}  // namespace fluxbatch::sampling
