// plan_decode and its predictions: pure functions of the VAE config, image size, tile size, dtype
// and budget (FLUX.1's VAE config, no weights).
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/decode_plan.h"

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch::runtime;
using fluxbatch::models::vae::VaeConfig;

namespace {

constexpr int64_t MiB = int64_t{1} << 20;
constexpr int64_t GiB = int64_t{1} << 30;
constexpr int64_t kVaeWeights = 160 * MiB;  // FLUX.1's VAE decoder in bf16 (about 50 M parameters), rounded up

TiledDecodeSetup tiles(int64_t pixels, bool on_host) {
  TiledDecodeSetup setup;
  setup.tile_pixels = pixels;
  setup.maps_on_host = on_host;
  return setup;
}

}  // namespace

TEST_CASE("vae tiles option: --vae-tiles values parse; anything else names the option and the forms", "[decode_plan]") {
  CHECK(parse_vae_tiles("auto").mode == VaeTilesMode::kAuto);
  CHECK(parse_vae_tiles("off").mode == VaeTilesMode::kOff);
  const VaeTiles on = parse_vae_tiles("on");
  CHECK(on.mode == VaeTilesMode::kOn);
  CHECK(on.tile_pixels == 0);
  const VaeTiles given = parse_vae_tiles("256");
  CHECK(given.mode == VaeTilesMode::kOn);
  CHECK(given.tile_pixels == 256);
  CHECK(parse_vae_tiles("512px").tile_pixels == 512);
  CHECK(vae_tiles_text(given) == "256");
  CHECK(vae_tiles_text(on) == "on");
  for (const char* bad : {"", "yes", "12", "100", "0", "-256", "8192", "256 px", "1e3"}) {
    INFO(bad);
    CHECK_THROWS_WITH(parse_vae_tiles(bad), ContainsSubstring("--vae-tiles: expected auto, off, on or a tile edge"));
  }
  CHECK_THROWS_AS(parse_vae_tiles("huge", "job.json: vae_tiles"), fluxbatch::InputError);
}

TEST_CASE("the whole FLUX.1 decode at 1024² in bf16 is predicted at the measured ~2.4 GiB", "[decode_plan]") {
  const VaeConfig flux;
  const int64_t whole = untiled_decode_bytes(flux, 1024, 1024, 2);
  CHECK(whole > 2 * GiB);
  CHECK(whole < 3 * GiB);
  // Linear in the pixels, and in the dtype's size.
  CHECK(untiled_decode_bytes(flux, 2048, 2048, 2) == untiled_decode_bytes(flux, 1024, 1024, 8));
}

TEST_CASE("exact tiles with maps in host memory: under 1 GiB at 1024², 4096² under 4 GiB", "[decode_plan]") {
  const VaeConfig flux;
  // Issue 15's targets, weights included.
  CHECK(kVaeWeights + tiled_decode_bytes(flux, 1024, 1024, 2, tiles(256, true)) < 1 * GiB);
  const DecodePlan big = plan_decode(flux, 4096, 4096, 2, /*host_maps=*/true, kVaeWeights, 4 * GiB, VaeTiles{});
  CHECK(big.tiled);
  CHECK(big.fits);
  CHECK(big.peak_bytes <= 4 * GiB);
  CHECK(big.setup.maps_on_host);  // 4096² x 256 channels alone is 8 GiB in bf16
  // Smaller tiles, smaller peaks (down to the attention's floor); maps on the device cost more than on the host.
  int64_t previous = tiled_decode_bytes(flux, 2048, 2048, 2, tiles(1024, true));
  for (const int64_t edge : {512, 256, 128, 64}) {
    const int64_t bytes = tiled_decode_bytes(flux, 2048, 2048, 2, tiles(edge, true));
    CHECK(bytes <= previous);
    if (edge >= 256) CHECK(bytes < previous);
    CHECK(bytes < tiled_decode_bytes(flux, 2048, 2048, 2, tiles(edge, false)));
    previous = bytes;
  }
  CHECK_THROWS_AS(tiled_decode_bytes(flux, 1024, 1024, 2, tiles(100, true)), fluxbatch::InputError);
  // The tiles compute in fp32 whatever the weights' dtype: bf16 weights cost nearly what fp32 ones
  // do (activations sized by the weights' dtype would be about half), plus at most one layer's fp32
  // copy of its weights (the largest: 512 x 512 x 3 x 3).
  const int64_t bf16 = tiled_decode_bytes(flux, 2048, 2048, 2, tiles(256, true));
  const int64_t fp32 = tiled_decode_bytes(flux, 2048, 2048, 4, tiles(256, true));
  CHECK(bf16 * 10 > fp32 * 9);
  CHECK(bf16 - fp32 <= 512 * 512 * 9 * 4);
}

TEST_CASE("plan_decode: auto decodes whole when it fits, else the largest exact tiles that fit", "[decode_plan]") {
  const VaeConfig flux;
  const int64_t whole = untiled_decode_bytes(flux, 1024, 1024, 2);

  const DecodePlan roomy = plan_decode(flux, 1024, 1024, 2, true, kVaeWeights, 16 * GiB, VaeTiles{});
  CHECK_FALSE(roomy.tiled);
  CHECK(roomy.fits);
  CHECK(roomy.peak_bytes == kVaeWeights + whole);
  CHECK(roomy.describe() == "whole image");
  // Unknown budget: whole.
  CHECK_FALSE(plan_decode(flux, 4096, 4096, 2, true, kVaeWeights, 0, VaeTiles{}).tiled);

  // Just under the whole decode: tiles, feature maps on the device where they fit.
  const int64_t budget = kVaeWeights + whole - 1;
  const DecodePlan tight = plan_decode(flux, 1024, 1024, 2, true, kVaeWeights, budget, VaeTiles{});
  CHECK(tight.tiled);
  CHECK(tight.fits);
  CHECK(tight.peak_bytes <= budget);
  CHECK(tight.peak_bytes == kVaeWeights + tight.activation_bytes);
  CHECK(tight.activation_bytes == tiled_decode_bytes(flux, 1024, 1024, 2, tight.setup));
  // The largest tile that fits: twice the tile (same storage and chunk) would not.
  if (tight.setup.tile_pixels < 1024) {
    TiledDecodeSetup larger = tight.setup;
    larger.tile_pixels *= 2;
    CHECK(kVaeWeights + tiled_decode_bytes(flux, 1024, 1024, 2, larger) > budget);
  }
  CHECK_THAT(tight.describe(), ContainsSubstring(" px tiles (exact, feature maps in "));

  // 1 GiB: only host maps fit.
  const DecodePlan small = plan_decode(flux, 1024, 1024, 2, true, kVaeWeights, 1 * GiB, VaeTiles{});
  CHECK(small.tiled);
  CHECK(small.fits);
  CHECK(small.setup.maps_on_host);
  // The maps up to twice the latent resolution ([1, 512, 256, 256], fp32 in the tiled decode) are
  // normalised whole.
  CHECK(small.setup.whole_norm_bytes == 128 * MiB);
  CHECK(small.describe() == std::to_string(small.setup.tile_pixels) + " px tiles (exact, feature maps in host memory)");
  // On the CPU there is no host to move them to: the maps stay, the plan does not fit.
  const DecodePlan cpu = plan_decode(flux, 1024, 1024, 2, false, kVaeWeights, 1 * GiB, VaeTiles{});
  CHECK(cpu.tiled);
  CHECK_FALSE(cpu.setup.maps_on_host);
  CHECK_FALSE(cpu.fits);
  CHECK(cpu.setup.tile_pixels == 64);  // the smallest setup tried
  CHECK(cpu.setup.whole_norm_bytes == 0);
  // Normalising maps whole costs device memory: more bytes with a larger limit.
  TiledDecodeSetup whole_norm = tiles(256, true);
  whole_norm.whole_norm_bytes = 0;
  const int64_t none = tiled_decode_bytes(flux, 4096, 4096, 2, whole_norm);
  whole_norm.whole_norm_bytes = GiB;
  CHECK(tiled_decode_bytes(flux, 4096, 4096, 2, whole_norm) > none);
}

TEST_CASE("plan_decode: off is always whole, a given tile edge is kept, odd sizes plan", "[decode_plan]") {
  const VaeConfig flux;
  const DecodePlan off = plan_decode(flux, 2048, 2048, 2, true, kVaeWeights, 1 * GiB, parse_vae_tiles("off"));
  CHECK_FALSE(off.tiled);
  CHECK_FALSE(off.fits);
  const DecodePlan given = plan_decode(flux, 1000, 600, 2, true, kVaeWeights, 16 * GiB, parse_vae_tiles("384"));
  CHECK(given.tiled);
  CHECK(given.setup.tile_pixels == 384);
  CHECK_FALSE(given.setup.maps_on_host);  // 16 GiB: the maps fit on the device
  const DecodePlan on = plan_decode(flux, 1000, 600, 2, true, kVaeWeights, 16 * GiB, parse_vae_tiles("on"));
  CHECK(on.tiled);
  CHECK(on.setup.tile_pixels == 1024);  // one tile per layer covers 1000 px
}

TEST_CASE("apply_decode_plan: the decode stage peaks at the decode plan's peak, whole or tiled; a calibrated whole "
          "decode keeps its measurement", "[decode_plan]") {
  MemoryModel model;
  model.components = {{"transformer", 4 * GiB}, {"vae", kVaeWeights}};
  model.stages.push_back({"denoise", {"transformer", "vae"}, {1.0, 0.0, 0}});
  model.stages.push_back({"decode", {"transformer", "vae"}, {2178.0, 0.0, 0}});
  CHECK(decode_stage_weight_bytes(model) == 4 * GiB + kVaeWeights);
  CHECK(calibrated_decode_bytes(model, 1024, 1024) == 0);  // built-in guesses: nothing measured
  const VaeConfig flux;
  const ResolutionGroup g{1024, 1024, 512, 1};

  // Uncalibrated whole decode: the batch plan's decode stage is the decode plan's prediction (images
  // decode one at a time, so it does not grow with the batch), no longer ComfyUI's per-pixel guess.
  const DecodePlan whole = plan_decode(flux, 1024, 1024, 2, true, 4 * GiB + kVaeWeights, 64 * GiB, VaeTiles{});
  REQUIRE_FALSE(whole.tiled);
  MemoryModel guessed = model;
  apply_decode_plan(guessed, whole);
  CHECK(guessed.stages[0].cost.bytes_per_pixel == 1.0);
  CHECK(guessed.stages[1].cost.bytes_per_pixel == 0.0);
  CHECK(plan_group(guessed, g, 1).stages[1].peak_bytes == whole.peak_bytes);
  CHECK(plan_group(guessed, g, 4).stages[1].peak_bytes == whole.peak_bytes);

  // Tiled: the same, with the tiles' prediction.
  const DecodePlan tiled =
      plan_decode(flux, 1024, 1024, 2, true, 4 * GiB + kVaeWeights, 64 * GiB, parse_vae_tiles("256"));
  MemoryModel tiled_model = model;
  apply_decode_plan(tiled_model, tiled);
  CHECK(tiled_model.stages[1].cost.bytes_per_pixel == 0.0);
  CHECK(tiled_model.stages[1].cost.fixed_bytes == tiled.activation_bytes);
  CHECK(plan_group(tiled_model, g, 4).stages[1].peak_bytes == tiled.peak_bytes);

  // Calibrated: the measured whole decode (here 1 GiB at batch 1, 0.25 GiB more per image) decides
  // between whole and tiles, and the batch plan keeps the measurement.
  MemoryModel measured = model;
  measured.calibrated = true;
  measured.stages[1].cost = StageCost{128.0, 0.0, int64_t{3} << 28};  // 0.25 GiB per 1024² image in bf16
  const int64_t measured_bytes = calibrated_decode_bytes(measured, 1024, 1024);
  CHECK(measured_bytes == GiB);
  const int64_t resident = 4 * GiB + kVaeWeights;
  // A budget between the measured 1 GiB and the 2.4 GiB prediction: whole only with the measurement.
  const int64_t budget = resident + GiB + 64 * MiB;
  CHECK(plan_decode(flux, 1024, 1024, 2, true, resident, budget, VaeTiles{}).tiled);
  const DecodePlan by_measure = plan_decode(flux, 1024, 1024, 2, true, resident, budget, VaeTiles{}, measured_bytes);
  CHECK_FALSE(by_measure.tiled);
  CHECK(by_measure.activation_bytes == GiB);
  MemoryModel kept = measured;
  apply_decode_plan(kept, by_measure);
  CHECK(kept.stages[1].cost.bytes_per_pixel == 128.0);
  CHECK(plan_group(kept, g, 1).stages[1].peak_bytes == by_measure.peak_bytes);
  // A calibrated model whose decode must tile takes the tiles' cost all the same.
  const DecodePlan forced = plan_decode(flux, 1024, 1024, 2, true, resident, budget, parse_vae_tiles("256"), measured_bytes);
  apply_decode_plan(kept, forced);
  CHECK(kept.stages[1].cost.fixed_bytes == forced.activation_bytes);
}
