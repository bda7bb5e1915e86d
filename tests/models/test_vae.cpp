// VAE decoder against diffusers: key names, fp32 / bf16 golden decodes, latent unscaling, tiling.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/models/weight_map.h"
#include "test_t5_clip_vae_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using namespace fluxbatch;
using namespace fluxbatch::test::encoders;
using fluxbatch::models::vae::VaeDecoder;

namespace {

VaeDecoder load_vae(const std::string& variant, at::ScalarType dtype, c10::Device device = c10::Device(c10::kCPU)) {
  const auto folder = model_dir(variant, "vae");
  VaeDecoder model(models::vae::VaeConfig::from_json_file(config_json(folder)),
                   at::TensorOptions().dtype(dtype).device(device));
  load_weights(*model, read_component_weights(folder), dtype, models::vae::vae_ignored_prefixes(), device);
  return model;
}

}  // namespace

TEST_CASE("VAE decoder parameter names equal the checkpoint's decoder keys", "[vae]") {
  const std::string variant = GENERATE("dev", "schnell");
  const auto folder = model_dir(variant, "vae");
  VaeDecoder model(models::vae::VaeConfig::from_json_file(config_json(folder)));
  const auto weights = read_component_weights(folder);
  CHECK(parameter_names(*model) == checkpoint_names(weights, models::vae::vae_ignored_prefixes()));
  CHECK(model->named_parameters().contains("decoder.mid_block.attentions.0.to_out.0.weight"));
  CHECK(model->named_parameters().contains("decoder.up_blocks.0.upsamplers.0.conv.weight"));
}

TEST_CASE("VAE fp32 CPU decode matches the diffusers golden", "[vae]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "vae.safetensors"));
  auto model = load_vae(variant, at::kFloat);
  at::NoGradGuard no_grad;
  const at::Tensor& latents = golden.at("latents");
  at::Tensor sample = model->decode(latents);
  const at::Tensor& expected = golden.at("sample");
  REQUIRE(sample.sizes() == at::IntArrayRef({latents.size(0), 3, 8 * latents.size(2), 8 * latents.size(3)}));
  // Same ATen ops in the same order (bit-identical here); the margin covers thread-count dependent
  // fp32 reductions.
  CHECK(max_abs_diff(sample, expected) <= 1e-5 * std::max(1.0, max_abs(expected)));
}

TEST_CASE("VAE bf16 CPU decode is within bf16 tolerance of the fp32 golden", "[vae]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "vae.safetensors"));
  auto model = load_vae(variant, at::kBFloat16);
  at::NoGradGuard no_grad;
  at::Tensor sample = model->decode(golden.at("latents").to(at::kBFloat16));
  CHECK(sample.scalar_type() == at::kBFloat16);
  const at::Tensor& expected = golden.at("sample");
  // bf16 (2^-8 relative per op) through ~15 conv/norm layers (measured ~1.5% of the peak).
  CHECK(max_abs_diff(sample, expected) <= 4e-2 * max_abs(expected));
}

TEST_CASE("VAE from the BFL ae.safetensors (LDM names, mapped) decodes like the diffusers folder", "[vae]") {
  auto golden = read_tensors(golden_file("dev", "vae.safetensors"));
  const auto config = models::vae::VaeConfig::from_json_file(config_json(model_dir("dev", "vae")));
  VaeDecoder model(config);
  const auto weights = models::vae_ldm_to_diffusers(read_tensors(model_dir("dev-bfl", "ae.safetensors")));
  CHECK(parameter_names(*model) == checkpoint_names(weights, models::vae::vae_ignored_prefixes()));
  load_weights(*model, weights, at::kFloat, models::vae::vae_ignored_prefixes());
  at::NoGradGuard no_grad;
  const at::Tensor& expected = golden.at("sample");
  CHECK(max_abs_diff(model->decode(golden.at("latents")), expected) <= 1e-5 * std::max(1.0, max_abs(expected)));
}

TEST_CASE("unscale_latents is latents / scaling_factor + shift_factor, rounded per op", "[vae]") {
  models::vae::VaeConfig config;  // FLUX: 0.3611, 0.1159
  at::Tensor x = at::tensor({1.0f, -2.5f, 0.125f});
  at::Tensor y = models::vae::unscale_latents(x, config);
  CHECK(at::allclose(y, at::tensor({1.0f / 0.3611f + 0.1159f, -2.5f / 0.3611f + 0.1159f, 0.125f / 0.3611f + 0.1159f})));
  // In bf16 the quotient is rounded to bf16 before the shift, as in the pipeline.
  at::Tensor xb = at::randn({64}).to(at::kBFloat16);
  at::Tensor two_ops = (xb / 0.3611).to(at::kBFloat16) + 0.1159;
  CHECK(at::equal(models::vae::unscale_latents(xb, config), two_ops));
}

TEST_CASE("VAE tiled decode stitches overlapping tiles like AutoencoderKL.tiled_decode", "[vae]") {
  auto model = load_vae("dev", at::kFloat);
  at::NoGradGuard no_grad;
  at::manual_seed(5);
  at::Tensor latents = at::randn({1, model->config().latent_channels, 10, 9});
  // 32 px tiles = 4 latents, stride 3 latents, 8 px blended, 24 px kept per tile.
  models::vae::TiledDecodeOptions options;
  options.tile_sample_size = 32;
  at::Tensor out = model->decode_tiled(latents, options);
  REQUIRE(out.sizes() == at::IntArrayRef({1, 3, 80, 72}));

  at::Tensor t00 = model->decode(latents.slice(2, 0, 4).slice(3, 0, 4));  // [1, 3, 32, 32]
  at::Tensor t01 = model->decode(latents.slice(2, 0, 4).slice(3, 3, 7));
  CHECK(at::equal(out.slice(2, 0, 24).slice(3, 0, 24), t00.slice(2, 0, 24).slice(3, 0, 24)));
  for (int64_t x = 0; x < 8; ++x) {
    at::Tensor blended = t00.select(3, 24 + x) * (1 - x / 8.0) + t01.select(3, x) * (x / 8.0);
    CHECK(at::equal(out.slice(2, 0, 24).select(3, 24 + x), blended.slice(2, 0, 24)));
  }
  CHECK(at::equal(out.slice(2, 0, 24).slice(3, 32, 48), t01.slice(2, 0, 24).slice(3, 8, 24)));

  // Latents that fit one tile decode whole, as diffusers does.
  at::Tensor small = latents.slice(2, 0, 4).slice(3, 0, 3);
  CHECK(at::equal(model->decode_tiled(small, options), model->decode(small)));
}

TEST_CASE("VAE rejects latents with the wrong channel count", "[vae]") {
  models::vae::VaeConfig config;
  config.block_out_channels = {8, 8};
  config.norm_num_groups = 4;
  config.layers_per_block = 0;
  VaeDecoder model(config);
  CHECK_THROWS_WITH(model->decode(at::zeros({1, 4, 2, 2})),
                    Catch::Matchers::ContainsSubstring("latents must be [batch, 16, h, w]"));
}

TEST_CASE("VAE on CUDA (bf16, fp32, tiled) stays within tolerance of the golden", "[.][cuda]") {
  const c10::Device device = cuda_device();
  auto golden = read_tensors(golden_file("dev", "vae.safetensors"));
  const at::Tensor& expected = golden.at("sample");
  at::NoGradGuard no_grad;
  // fp32 convolutions may use TF32 (cuDNN's default, as in PyTorch): 10-bit mantissa products.
  for (auto [dtype, tolerance] : {std::pair{at::kBFloat16, 4e-2}, std::pair{at::kFloat, 1e-2}}) {
    INFO("dtype " << dtype);
    auto model = load_vae("dev", dtype, device);
    at::Tensor latents = golden.at("latents").to(device, dtype);
    at::Tensor sample = model->decode(latents);
    CHECK(sample.device() == device);
    CHECK(max_abs_diff(sample, expected) <= tolerance * max_abs(expected));
    models::vae::TiledDecodeOptions options;
    options.tile_sample_size = 32;
    CHECK(model->decode_tiled(latents, options).sizes() == sample.sizes());
  }
}
