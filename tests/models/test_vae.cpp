// VAE decoder against diffusers: key names, fp32 / bf16 golden decodes, latent unscaling; the exact
// tiled decode against the whole decode.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/models/weight_map.h"
#include "fluxbatch/nn/ieee_convolutions.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/decode_plan.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "test_t5_clip_vae_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <functional>
#include <limits>
#include <utility>

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

namespace {

// Pixels (postprocessed like a render: (x / 2 + 0.5) clamped, times 255, rounded) of two decodes:
// the share of values within one 8-bit level of each other, and the largest difference in levels.
std::pair<double, int64_t> pixel_match(const at::Tensor& a, const at::Tensor& b) {
  const auto levels = [](const at::Tensor& x) {
    return (x.to(at::kCPU, at::kFloat) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kLong);
  };
  const at::Tensor diff = (levels(a) - levels(b)).abs();
  return {diff.le(1).to(at::kDouble).mean().item<double>(), diff.max().item<int64_t>()};
}

}  // namespace

TEST_CASE("VAE exact tiled decode equals the whole decode at any tile size and image size (fp32)", "[vae][tiles]") {
  auto model = load_vae("dev", at::kFloat);
  at::NoGradGuard no_grad;
  at::manual_seed(7);
  // Odd, non-square latents (104 x 168 px), batch 2; tiles that divide nothing evenly, one latent
  // per tile, one tile larger than the image.
  const at::Tensor latents = at::randn({2, model->config().latent_channels, 13, 21});
  const at::Tensor full = model->decode(latents);
  struct Case {
    int64_t tile, chunk_tokens;  // the mid-block attention's queries in chunks of 5, or all 273
    bool whole_norm;             // small maps normalised whole by at::group_norm, or every map over tiles
  };
  for (const Case c : {Case{8, 5, false}, Case{24, 273, false}, Case{40, 5, true}, Case{64, 273, false},
                       Case{256, 273, true}}) {
    INFO("tile " << c.tile << " px, attention chunk " << c.chunk_tokens << " queries, whole norm " << c.whole_norm);
    models::vae::ExactTileOptions options;
    options.tile_pixels = c.tile;
    options.attention_chunk_bytes = 12 * 13 * 21 * c.chunk_tokens;
    options.whole_norm_bytes = c.whole_norm ? options.whole_norm_bytes : 0;
    const at::Tensor tiled = model->decode_exact_tiled(latents, options);
    REQUIRE(tiled.sizes() == full.sizes());
    CHECK(max_abs_diff(tiled, full) <= 1e-4 * std::max(1.0, max_abs(full)));
    const auto [within_one, worst] = pixel_match(tiled, full);
    CHECK(within_one >= 0.999);
    CHECK(worst <= 1);
  }
}

TEST_CASE("VAE exact tiled decode of bf16 weights: fp32 tiles match the fp32 whole decode of the same weights",
          "[vae][tiles]") {
  auto model = load_vae("dev", at::kBFloat16);
  auto model32 = load_vae("dev", at::kBFloat16);
  model32->to(at::kFloat);  // the same (bf16-rounded) weights, in fp32
  at::NoGradGuard no_grad;
  at::manual_seed(8);
  const at::Tensor latents = at::randn({1, model->config().latent_channels, 17, 12}).to(at::kBFloat16);
  const at::Tensor full32 = model32->decode(latents.to(at::kFloat));
  for (const int64_t tile : {32, 64}) {
    INFO("tile " << tile << " px");
    models::vae::ExactTileOptions options;  // compute: fp32 (the default)
    options.tile_pixels = tile;
    options.whole_norm_bytes = 0;  // every map over tiles
    const at::Tensor tiled = model->decode_exact_tiled(latents, options);
    CHECK(tiled.scalar_type() == at::kBFloat16);  // rounded once, at the end, like decode()'s image
    // Within the final bf16 rounding of the fp32 image (half an ulp of values up to ~2: 2^-8).
    CHECK(max_abs_diff(tiled, full32) <= 1e-2 * std::max(1.0, max_abs(full32)));
    const auto [within_one, worst] = pixel_match(tiled, full32);
    INFO(within_one * 100 << "% within one level, worst " << worst);
    CHECK(within_one >= 0.999);
    CHECK(worst <= 1);
  }
}

TEST_CASE("VAE exact tiled decode computing in bf16: bit-identical with whole-map GroupNorm, close with tile "
          "statistics",
          "[vae][tiles]") {
  auto model = load_vae("dev", at::kBFloat16);
  at::NoGradGuard no_grad;
  at::manual_seed(8);
  const at::Tensor latents = at::randn({1, model->config().latent_channels, 17, 12}).to(at::kBFloat16);
  const at::Tensor full = model->decode(latents);
  for (const int64_t tile : {32, 64}) {
    INFO("tile " << tile << " px");
    models::vae::ExactTileOptions options;
    options.tile_pixels = tile;
    options.compute = std::nullopt;  // the latents' dtype
    // Every map normalised whole by at::group_norm: the tiles (halo convolutions, chunked attention,
    // upsampling) change no bit.
    options.whole_norm_bytes = int64_t{1} << 40;
    const at::Tensor exact = model->decode_exact_tiled(latents, options);
    REQUIRE(exact.sizes() == full.sizes());
    CHECK(exact.scalar_type() == at::kBFloat16);
    CHECK(at::equal(exact, full));
    // What plan_decode prefers: the maps up to twice the latent resolution normalised whole, the
    // larger ones with statistics gathered over tiles, which differ from at::group_norm's float
    // reduction in the last bit now and then. This random tiny VAE amplifies such one-ulp
    // differences into a few 8-bit levels (with none whole: 94% within one level, worst 6, since
    // the mid-block attention spreads them over the image), so the bound here is looser than
    // issue 15's targets, which the fp32 test above and the GPU benchmark check.
    options.whole_norm_bytes = 4 * 64 * 17 * 12 * 2;  // [1, 64, 34, 24] bf16: twice the latent resolution
    const auto [within_one, worst] = pixel_match(model->decode_exact_tiled(latents, options), full);
    INFO(within_one * 100 << "% within one level, worst " << worst);
    CHECK(within_one >= 0.99);
    CHECK(worst <= 4);
  }
}

TEST_CASE("VAE exact tiled decode holds a fraction of the whole decode's memory", "[vae][tiles]") {
  auto model = load_vae("dev", at::kFloat);
  at::NoGradGuard no_grad;
  at::manual_seed(9);
  const at::Tensor latents = at::randn({1, model->config().latent_channels, 48, 40});  // 384 x 320 px
  runtime::CpuMemoryBudget budget(std::numeric_limits<int64_t>::max());
  const auto peak = [&](const std::function<at::Tensor()>& decode) {
    at::Tensor out;
    budget.reset_peak();
    const int64_t before = budget.live_bytes();
    out = decode();
    return budget.peak_bytes() - before;
  };
  const models::vae::VaeConfig& config = model->config();
  const int64_t whole = peak([&] { return model->decode(latents); });
  models::vae::ExactTileOptions options;
  options.tile_pixels = 64;
  const int64_t tiled = peak([&] { return model->decode_exact_tiled(latents, options); });
  runtime::TiledDecodeSetup setup;
  setup.tile_pixels = 64;
  setup.maps_on_host = false;  // on the CPU the maps are on the (host) device and counted
  const int64_t predicted_tiled = runtime::tiled_decode_bytes(config, 320, 384, 4, setup);
  const int64_t predicted_whole = runtime::untiled_decode_bytes(config, 320, 384, 4);
  INFO("peaks: whole " << whole << " B (predicted " << predicted_whole << "), tiled " << tiled << " B (predicted "
                       << predicted_tiled << ")");
  CHECK(tiled < whole);
  // The tiled prediction bounds what the CPU measures, without overshooting it threefold. The whole
  // decode's is fitted to the GPU (2.4 GiB at 1024² in bf16 on the H100); oneDNN's convolutions on
  // the CPU hold extra reordered copies (about 1.5x here).
  CHECK(tiled <= predicted_tiled);
  CHECK(predicted_tiled - runtime::kTiledDecodeFixedBytes <= 3 * tiled);
  CHECK(whole <= 2 * predicted_whole);
  CHECK(predicted_whole <= 3 * whole);
}

TEST_CASE("VAE exact tiled decode rejects tiles that are not a multiple of the scale factor", "[vae][tiles]") {
  auto model = load_vae("dev", at::kFloat);
  models::vae::ExactTileOptions options;
  options.tile_pixels = 12;
  CHECK_THROWS_WITH(model->decode_exact_tiled(at::zeros({1, 16, 4, 4}), options),
                    Catch::Matchers::ContainsSubstring("multiple of 8 pixels, got 12"));
  options.tile_pixels = 0;
  CHECK_THROWS_AS(model->decode_exact_tiled(at::zeros({1, 16, 4, 4}), options), InputError);
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
    models::vae::ExactTileOptions options;
    options.tile_pixels = 32;
    const at::Tensor tiled = model->decode_exact_tiled(latents, options);
    CHECK(tiled.device() == device);
    CHECK(tiled.scalar_type() == dtype);
    CHECK(max_abs_diff(tiled, expected) <= tolerance * max_abs(expected));
  }
}

namespace {

// The tiny dev VAE in bf16 on CUDA, random bf16 latents [1, 16, h, w] (seeded), and the image the exact
// tiled decode (fp32 by default) must reproduce up to rounding: the whole decode of the same weights in
// true fp32 (cuDNN's TF32 off).
struct CudaTileCase {
  VaeDecoder model{nullptr};
  at::Tensor latents, reference;
};
CudaTileCase cuda_tile_case(uint64_t seed, int64_t h, int64_t w) {
  const c10::Device device = cuda_device();
  at::manual_seed(seed);
  CudaTileCase c;
  c.model = load_vae("dev", at::kBFloat16, device);
  c.latents = at::randn({1, 16, h, w}).to(device, at::kBFloat16);
  auto model32 = load_vae("dev", at::kBFloat16, device);
  model32->to(at::kFloat);
  const nn::IeeeConvolutions ieee;
  c.reference = model32->decode(c.latents.to(at::kFloat));
  return c;
}

}  // namespace

TEST_CASE("VAE exact tiled decode on CUDA: the fp32 whole decode's pixels from bf16 weights", "[.][cuda]") {
  at::NoGradGuard no_grad;
  CudaTileCase c = cuda_tile_case(11, 40, 56);  // 320 x 448 px
  VaeDecoder& model = c.model;
  const at::Tensor& latents = c.latents;
  const at::Tensor& reference = c.reference;
  const auto [bf16_within, bf16_worst] = pixel_match(model->decode(latents), reference);
  for (const int64_t tile : {32, 128}) {
    models::vae::ExactTileOptions options;
    options.tile_pixels = tile;
    options.whole_norm_bytes = 0;
    const auto [within_one, worst] = pixel_match(model->decode_exact_tiled(latents, options), reference);
    INFO("tile " << tile << " px: " << within_one * 100 << "% within one level of the fp32 whole decode, worst "
                 << worst << " (the bf16 whole decode: " << bf16_within * 100 << "%, worst " << bf16_worst << ")");
    CHECK(within_one >= 0.999);
    CHECK(worst <= 2);
  }
}

TEST_CASE("VAE exact tiled decode on CUDA: the whole decode's pixels at a smaller device peak", "[.][cuda]") {
  const c10::Device device = cuda_device();
  at::NoGradGuard no_grad;
  CudaTileCase c = cuda_tile_case(10, 96, 80);  // 768 x 640 px
  VaeDecoder& model = c.model;
  const at::Tensor& latents = c.latents;
  const at::Tensor& reference = c.reference;
  const auto peak_of = [&](const std::function<at::Tensor()>& decode, at::Tensor& out) {
    runtime::synchronize(device);
    const int64_t base = runtime::allocated_bytes(device);
    runtime::reset_peak_memory(device);
    out = decode();
    runtime::synchronize(device);
    return runtime::peak_allocated_bytes(device) - base;
  };
  at::Tensor full;
  const int64_t whole_peak = peak_of([&] { return model->decode(latents); }, full);
  for (const bool maps_on_host : {true, false}) {
    INFO("maps on host " << maps_on_host << ", whole peak " << whole_peak << " B");
    models::vae::ExactTileOptions options;
    options.tile_pixels = 128;
    options.maps_on_host = maps_on_host;
    // fp32 tiles of bf16 weights: the fp32 whole decode of the same weights, up to rounding.
    at::Tensor tiled;
    (void)peak_of([&] { return model->decode_exact_tiled(latents, options); }, tiled);
    REQUIRE(tiled.device() == device);
    const auto [within_one, worst] = pixel_match(tiled, reference);
    const auto [bf16_within, bf16_worst] = pixel_match(full, reference);
    INFO(within_one * 100 << "% within one level of the fp32 whole decode, worst " << worst << " (the bf16 whole "
                          << "decode: " << bf16_within * 100 << "%, worst " << bf16_worst << ")");
    CHECK(within_one >= 0.999);
    CHECK(worst <= 2);
    // Every map over tiles: the smallest device peak, within the planner's prediction.
    options.whole_norm_bytes = 0;
    const int64_t tiled_peak = peak_of([&] { return model->decode_exact_tiled(latents, options); }, tiled);
    INFO("tiled peak " << tiled_peak << " B");
    runtime::TiledDecodeSetup setup;
    setup.tile_pixels = 128;
    setup.maps_on_host = maps_on_host;
    setup.whole_norm_bytes = 0;
    CHECK(tiled_peak <= runtime::tiled_decode_bytes(model->config(), 640, 768, 2, setup));
    if (maps_on_host) CHECK(tiled_peak * 2 < whole_peak);
  }
}
