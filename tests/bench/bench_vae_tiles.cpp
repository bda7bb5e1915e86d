// The exact tiled VAE decode against the whole decode (issue 15). Not a test: scripts/bench/vae_tiles_bench.sh
// runs it on the GPU machine.
//   fluxbatch_bench_vae_tiles VAE_DIR [--device cuda] [--dtype bf16] [--sizes 1024,2048] [--tiles 256,512]
//                             [--big 4096] [--budget 4G] [--seed 0] [--json OUT.json] [--whole-norm-mib N]
// VAE_DIR is a diffusers AutoencoderKL folder (config.json + safetensors; scripts/bench/make_random_flux.py writes
// a random full-size FLUX.1 one: pixel agreement and memory do not need trained weights). For each size S of
// --sizes, random latents [1, 16, S/8, S/8] are decoded whole and in exact tiles of each --tiles edge (feature
// maps in host memory on CUDA; maps up to twice the latent resolution, or --whole-norm-mib, normalised whole), and
// it prints, as key=value lines:
//   S_whole_peak_gib, S_whole_s                 the whole decode's device peak (allocator, weights excluded), time
//   S_tTILE_peak_gib, S_tTILE_s                 the same for the tiled decode (and _peak_with_weights_gib)
//   S_whole_vs_fp32_within_one, _worst_levels   the whole decode in --dtype against the whole decode of the same
//                                               weights in true fp32 (TF32 off): the dtype's own rounding (not
//                                               printed for --dtype fp32, whose whole decode is that reference)
//   S_tTILE_within_one, S_tTILE_worst_levels    the share of 8-bit pixel values of the tiled decode (fp32 compute,
//                                               the default) within one level of the fp32 whole decode's, and
//                                               the largest difference (targets: >= 0.999, <= 2)
//   S_tTILE_vs_whole_within_one, _worst_levels  the same against the whole decode in --dtype (the untiled render)
//   S_tTILE_predicted_gib                       runtime::tiled_decode_bytes, the planner's prediction
// then --big: a BIGxBIG decode in the tiles plan_decode picks for --budget (weights included), the allocator
// capped at the budget: big_tile, big_maps_on_host, big_predicted_gib, big_peak_gib (weights included), big_s,
// big_within_budget (1/0). Peaks on the CPU come from the counting allocator (runtime::CpuMemoryBudget).
// --json is rewritten after every figure, so a run cut short keeps what it measured.
#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/nn/ieee_convolutions.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/decode_plan.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/oom.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace fluxbatch;

namespace {

std::map<std::string, double> g_figures;
std::string g_json, g_json_head;  // --json's path; "device" and "dtype"

void figure(const std::string& name, double value) {
  g_figures[name] = value;
  std::printf("%s=%.6g\n", name.c_str(), value);
  std::fflush(stdout);
  if (g_json.empty()) return;
  std::ofstream out(g_json);
  out << "{" << g_json_head;
  for (const auto& [key, figure_value] : g_figures) out << ", \"" << key << "\": " << figure_value;
  out << "}\n";
}

std::vector<int64_t> numbers(const std::string& list) {
  std::vector<int64_t> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Peak device bytes of `work` above what was allocated before it (weights excluded).
class PeakMeter {
 public:
  explicit PeakMeter(c10::Device device) : device_(device) {
    if (device.is_cpu()) cpu_ = std::make_unique<runtime::CpuMemoryBudget>(std::numeric_limits<int64_t>::max());
  }
  int64_t now() const { return cpu_ ? cpu_->live_bytes() : runtime::allocated_bytes(device_); }
  // Returns the peak above the allocation at the start, and the seconds taken.
  std::pair<int64_t, double> measure(const std::function<void()>& work) {
    runtime::synchronize(device_);
    const int64_t base = now();
    if (cpu_) cpu_->reset_peak(); else runtime::reset_peak_memory(device_);
    const auto t0 = std::chrono::steady_clock::now();
    work();
    runtime::synchronize(device_);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t peak = cpu_ ? cpu_->peak_bytes() : runtime::peak_allocated_bytes(device_);
    return {peak - base, seconds};
  }

 private:
  c10::Device device_;
  std::unique_ptr<runtime::CpuMemoryBudget> cpu_;
};

// (x / 2 + 0.5) clamped to [0, 1], times 255, rounded, as sampling::postprocess_uint8 does.
at::Tensor levels(const at::Tensor& x) {
  return (x.to(at::kFloat) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kShort);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s VAE_DIR [--device cuda] [--dtype bf16] [--sizes 1024,2048] [--tiles 256,512] "
                         "[--big 4096] [--budget 4G] [--seed 0] [--json OUT.json]\n", argv[0]);
    return 2;
  }
  const fs::path vae_dir = argv[1];
  std::map<std::string, std::string> opt = {{"--device", "cuda"}, {"--dtype", "bf16"}, {"--sizes", "1024,2048"},
                                            {"--tiles", "256,512"}, {"--big", "4096"}, {"--budget", "4G"},
                                            {"--seed", "0"}, {"--json", ""}, {"--whole-norm-mib", ""}};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!opt.count(argv[i])) {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
    opt[argv[i]] = argv[i + 1];
  }
  try {
    const c10::Device device = runtime::parse_device(opt["--device"]);
    const c10::ScalarType dtype = runtime::parse_dtype(opt["--dtype"]);
    const int dtype_size = static_cast<int>(c10::elementSize(dtype));
    const models::vae::VaeConfig config = models::vae::VaeConfig::from_json_file((vae_dir / "config.json").string());
    g_json = opt["--json"];
    g_json_head = "\"device\": \"" + device.str() + "\", \"dtype\": \"" + runtime::dtype_name(dtype) + "\"";
    // fp32 convolutions in true fp32 (cuDNN's TF32 off) for the fp32 reference decode; the tiled
    // decode turns TF32 off itself.
    const nn::IeeeConvolutions ieee;
    PeakMeter meter(device);  // before the weights: on the CPU they are counted from here on

    const auto load_vae = [&] {
      models::vae::VaeDecoder model(config, at::TensorOptions().dtype(dtype).device(device));
      std::vector<std::string> files;
      for (const auto& entry : fs::directory_iterator(vae_dir)) {
        if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
      }
      nn::LoadOptions load;
      load.dtype = dtype;
      load.device = device;
      load.ignore_prefixes = models::vae::vae_ignored_prefixes();
      load.what = "vae (" + vae_dir.string() + ")";
      nn::load_state(*model, nn::read_safetensors(files), load);
      return model;
    };
    const int64_t before_weights = meter.now();
    models::vae::VaeDecoder vae = load_vae();
    runtime::synchronize(device);
    const int64_t weight_bytes = meter.now() - before_weights;
    // The same weights (rounded to --dtype) in fp32, for the reference decode; dropped before --big.
    // With fp32 weights the whole decode is the reference itself.
    models::vae::VaeDecoder vae32{nullptr};
    if (dtype != at::kFloat) {
      vae32 = load_vae();
      vae32->to(at::kFloat);
    }
    std::printf("device=%s dtype=%s vae=%s\n", device.str().c_str(), runtime::dtype_name(dtype).c_str(),
                vae_dir.string().c_str());
    figure("weights_gib", static_cast<double>(weight_bytes) / kGiB);
    const c10::InferenceMode inference;
    at::manual_seed(std::stoll(opt["--seed"]));

    for (const int64_t size : numbers(opt["--sizes"])) {
      const std::string s = std::to_string(size);
      const at::Tensor latents = at::randn({1, config.latent_channels, size / 8, size / 8}).to(device, dtype);
      at::Tensor whole_levels, fp32_levels;  // [1, 3, S, S] on the host
      // Agreement of two level maps: the share within one level and the worst difference.
      const auto agreement = [&](const std::string& key, const at::Tensor& a, const at::Tensor& b) {
        const at::Tensor diff = (a - b).abs();
        figure(key + "_within_one", diff.le(1).to(at::kDouble).mean().item<double>());
        figure(key + "_worst_levels", static_cast<double>(diff.max().item<int16_t>()));
      };
      try {
        at::Tensor whole;
        const auto [peak, seconds] = meter.measure([&] { whole = vae->decode(latents); });
        whole_levels = levels(whole).cpu();
        figure(s + "_whole_peak_gib", static_cast<double>(peak) / kGiB);
        figure(s + "_whole_s", seconds);
        figure(s + "_whole_std", whole.to(at::kFloat).std().item<double>());  // random weights: not degenerate
        whole = at::Tensor();
        runtime::release_cached_memory();
        if (vae32.is_empty()) {
          fp32_levels = whole_levels;
        } else {
          at::Tensor image32;
          const auto fp32_seconds = meter.measure([&] { image32 = vae32->decode(latents.to(at::kFloat)); }).second;
          figure(s + "_whole_fp32_s", fp32_seconds);
          fp32_levels = levels(image32).cpu();
          agreement(s + "_whole_vs_fp32", whole_levels, fp32_levels);
        }
      } catch (const std::exception& e) {
        if (!runtime::is_out_of_memory(e)) throw;
        std::printf("%s_whole=out of memory\n", s.c_str());
      }
      runtime::release_cached_memory();
      for (const int64_t tile : numbers(opt["--tiles"])) {
        const std::string t = s + "_t" + std::to_string(tile);
        models::vae::ExactTileOptions options;
        options.tile_pixels = tile;
        options.maps_on_host = true;
        // Maps up to twice the latent resolution normalised whole (bit-exact), as plan_decode prefers.
        options.whole_norm_bytes = opt["--whole-norm-mib"].empty()
                                       ? 4 * config.block_out_channels.back() * (size / 8) * (size / 8) * runtime::kTiledComputeBytes
                                       : std::stoll(opt["--whole-norm-mib"]) << 20;
        at::Tensor tiled;
        const auto [peak, seconds] = meter.measure([&] { tiled = vae->decode_exact_tiled(latents, options); });
        figure(t + "_peak_gib", static_cast<double>(peak) / kGiB);
        figure(t + "_peak_with_weights_gib", static_cast<double>(peak + weight_bytes) / kGiB);
        figure(t + "_s", seconds);
        runtime::TiledDecodeSetup setup;
        setup.tile_pixels = tile;
        setup.maps_on_host = device.is_cuda();
        setup.whole_norm_bytes = options.whole_norm_bytes;
        figure(t + "_predicted_gib",
               static_cast<double>(runtime::tiled_decode_bytes(config, static_cast<int>(size), static_cast<int>(size),
                                                               dtype_size, setup)) / kGiB);
        const at::Tensor tiled_levels = levels(tiled).cpu();
        if (fp32_levels.defined()) agreement(t, tiled_levels, fp32_levels);
        if (whole_levels.defined()) agreement(t + "_vs_whole", tiled_levels, whole_levels);
        tiled = at::Tensor();
        runtime::release_cached_memory();
      }
    }

    vae32 = nullptr;
    runtime::release_cached_memory();
    if (const int64_t big = std::stoll(opt["--big"]); big > 0) {
      const int64_t budget = runtime::parse_byte_size(opt["--budget"], "--budget");
      const runtime::DecodePlan plan =
          runtime::plan_decode(config, static_cast<int>(big), static_cast<int>(big), dtype_size, device.is_cuda(),
                               weight_bytes, budget, runtime::VaeTiles{runtime::VaeTilesMode::kOn, 0});
      std::printf("big_plan=%s\n", plan.describe().c_str());
      figure("big_tile", static_cast<double>(plan.setup.tile_pixels));
      figure("big_maps_on_host", plan.setup.maps_on_host ? 1 : 0);
      figure("big_predicted_gib", static_cast<double>(plan.peak_bytes) / kGiB);
      const at::Tensor latents = at::randn({1, config.latent_channels, big / 8, big / 8}).to(device, dtype);
      runtime::release_cached_memory();
      if (device.is_cuda()) runtime::cap_cuda_memory(device.has_index() ? device.index() : 0, budget);
      models::vae::ExactTileOptions options;
      options.tile_pixels = plan.setup.tile_pixels;
      options.maps_on_host = plan.setup.maps_on_host;
      options.attention_chunk_bytes = plan.setup.attention_chunk_bytes;
      options.whole_norm_bytes = plan.setup.whole_norm_bytes;
      figure("big_whole_norm_mib", static_cast<double>(plan.setup.whole_norm_bytes) / (1 << 20));
      at::Tensor image;
      const auto [peak, seconds] = meter.measure([&] { image = vae->decode_exact_tiled(latents, options); });
      const int64_t total = peak + weight_bytes + static_cast<int64_t>(latents.numel()) * dtype_size;
      figure("big_size", static_cast<double>(big));
      figure("big_peak_gib", static_cast<double>(total) / kGiB);
      figure("big_s", seconds);
      figure("big_budget_gib", static_cast<double>(budget) / kGiB);
      figure("big_within_budget", total <= budget ? 1 : 0);
      figure("big_std", image.to(at::kFloat).std().item<double>());
    }

  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", runtime::exception_message(e).c_str());
    return 1;
  }
  return 0;
}
