#include "fluxbatch/sampling/latents.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

namespace fluxbatch::sampling {

LatentSize latent_size(int64_t image_height, int64_t image_width, int64_t vae_scale_factor) {
  const int64_t unit = vae_scale_factor * 2;
  LatentSize size{2 * (image_height / unit), 2 * (image_width / unit)};
  FLUXBATCH_CHECK(size.height > 0 && size.width > 0, InputError,
                  "image size " + std::to_string(image_width) + "x" + std::to_string(image_height) +
                      " is smaller than one latent patch (" + std::to_string(unit) + " px)");
  return size;
}

// latents: [B, C, h, w] -> [B, (h/2)(w/2), 4C]
at::Tensor pack_latents(const at::Tensor& latents) {
  FLUXBATCH_CHECK(latents.dim() == 4 && latents.size(2) % 2 == 0 && latents.size(3) % 2 == 0, InputError,
                  "pack_latents: expected [B, C, h, w] with even h and w, got " + c10::str(latents.sizes()));
  const int64_t b = latents.size(0), c = latents.size(1), h = latents.size(2), w = latents.size(3);
  return latents.view({b, c, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, (h / 2) * (w / 2), c * 4});
}

// packed: [B, (h/2)(w/2), 4C] -> [B, C, h, w]
at::Tensor unpack_latents(const at::Tensor& packed, LatentSize size) {
  FLUXBATCH_CHECK(packed.dim() == 3 && packed.size(1) == size.seq_len() && packed.size(2) % 4 == 0, InputError,
                  "unpack_latents: expected [B, " + std::to_string(size.seq_len()) + ", 4C], got " +
                      c10::str(packed.sizes()));
  const int64_t b = packed.size(0), c = packed.size(2) / 4;
  return packed.view({b, size.height / 2, size.width / 2, c, 2, 2})
      .permute({0, 3, 1, 4, 2, 5})
      .reshape({b, c, size.height, size.width});
}

at::Tensor latent_image_ids(LatentSize size, c10::ScalarType dtype, c10::Device device) {
  const int64_t h = size.height / 2, w = size.width / 2;
  at::Tensor ids = at::zeros({h, w, 3}, at::kFloat);
  ids.select(2, 1).add_(at::arange(h, at::kFloat).unsqueeze(1));
  ids.select(2, 2).add_(at::arange(w, at::kFloat).unsqueeze(0));
  return ids.reshape({h * w, 3}).to(device, dtype);
}

at::Tensor text_ids(int64_t seq_len, c10::ScalarType dtype, c10::Device device) {
  return at::zeros({seq_len, 3}, at::TensorOptions().dtype(dtype).device(device));
}

at::Tensor initial_noise(const std::vector<uint64_t>& seeds, int64_t channels, LatentSize size,
                         c10::ScalarType dtype, c10::Device device) {
  FLUXBATCH_CHECK(!seeds.empty(), InputError, "initial_noise: no seeds");
  std::vector<at::Tensor> draws;
  draws.reserve(seeds.size());
  for (uint64_t seed : seeds) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    draws.push_back(at::randn({1, channels, size.height, size.width}, gen, at::TensorOptions().dtype(dtype)));
  }
  return pack_latents(at::cat(draws, 0)).to(device);
}

}  // namespace fluxbatch::sampling
