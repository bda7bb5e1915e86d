// GPU check and timing of our FluxTransformer2DModel against diffusers on the same weights and inputs.
// Not a test: scripts/bench/run_h100.sh runs it after scripts/bench/diffusers_reference.py wrote --ref.
//   fluxbatch_bench_transformer MODEL_DIR REF.safetensors [reps [NF4_MODEL_DIR]]
// Prints the relative L2 error of our bf16 output against diffusers', the median forward time and the
// peak memory the forward adds on top of the weights; then the same for the NF4 transformer in the same
// run: quantized while loading from MODEL_DIR's bf16 file, and (given NF4_MODEL_DIR, a bitsandbytes
// NF4 folder such as diffusers' save_pretrained writes) loaded as it is, with the load time of each.
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace fluxbatch;

namespace {

int64_t allocated_peak() {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return stats.allocated_bytes[0].peak;
}
int64_t allocated_now() {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
  return stats.allocated_bytes[0].current;
}

std::vector<std::string> safetensors_in(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Median forward time over `reps` (after 2 warm-ups) and the peak memory it adds to what is allocated.
template <typename Fn>
void time_forward(const char* label, const Fn& run, int reps) {
  const int64_t base = allocated_now();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  std::vector<double> ms;
  for (int i = 0; i < reps + 2; ++i) {
    c10::cuda::device_synchronize();
    const auto s = std::chrono::steady_clock::now();
    run();
    c10::cuda::device_synchronize();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("%s forward: %.1f ms (median of %d), peak extra %.2f GiB\n", label, ms[ms.size() / 2], reps,
              (allocated_peak() - base) / double(1 << 30));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR REF.safetensors [reps]\n", argv[0]);
    return 2;
  }
  const fs::path model_dir = argv[1];
  const std::string ref_path = argv[2];
  const int reps = argc > 3 ? std::stoi(argv[3]) : 10;
  try {
    c10::InferenceMode guard;
    const auto config = models::flux::FluxConfig::from_json_file((model_dir / "transformer" / "config.json").string());
    const auto options = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const std::vector<std::string> files = safetensors_in(model_dir / "transformer");
    const auto t0 = std::chrono::steady_clock::now();
    models::flux::FluxTransformer2DModel model(config, options);
    nn::LoadOptions load;
    load.dtype = at::kBFloat16;
    load.device = at::Device(at::kCUDA);
    load.what = "transformer";
    nn::load_state(*model, nn::read_safetensors(files), load);
    c10::cuda::device_synchronize();
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("fluxbatch transformer load: %.1f s, weights %.2f GiB on the GPU\n", load_s,
                allocated_now() / double(1 << 30));

    auto ref = nn::read_safetensors({ref_path});
    auto in = [&](const char* name) { return ref.at(name).to(at::kCUDA); };
    const at::Tensor guidance = config.guidance_embeds ? in("guidance") : at::Tensor();
    auto run = [&] {
      return model->forward(in("hidden_states"), in("encoder_hidden_states"), in("pooled_projections"),
                            in("timestep"), in("img_ids"), in("txt_ids"), guidance);
    };
    at::Tensor out = run().to(at::kFloat).cpu();
    const at::Tensor expected = ref.at("output").to(at::kFloat);
    const double rel_l2 = ((out - expected).norm() / expected.norm()).item<double>();
    std::printf("fluxbatch transformer vs diffusers: relative L2 error %.3e (max abs %.3e)\n", rel_l2,
                (out - expected).abs().max().item<double>());

    time_forward("fluxbatch transformer bf16", run, reps);
    model = nullptr;
    c10::cuda::CUDACachingAllocator::emptyCache();

    // NF4: the model is built on the CPU (at::empty only reserves pages) and every Linear is replaced
    // by its NF4 form on the GPU, as runtime::FluxPipeline does.
    auto load_nf4 = [&](const char* label, const std::vector<std::string>& nf4_files, bool quantize) {
      const int64_t before = allocated_now();
      const auto t = std::chrono::steady_clock::now();
      models::flux::FluxTransformer2DModel nf4(config, options.device(at::kCPU));
      if (quantize) {
        nn::load_state_quantizing_nf4(*nf4, nn::read_safetensors(nf4_files), load);
      } else {
        nn::load_nf4_state(*nf4, nn::read_safetensors(nf4_files), load);
      }
      c10::cuda::device_synchronize();
      const double s = seconds_since(t);
      std::printf("%s load: %.1f s, weights %.3f GB (%.2f GiB) on the GPU incl. the shared scratch\n", label, s,
                  (allocated_now() - before) / 1e9, (allocated_now() - before) / double(1 << 30));
      auto run_nf4 = [&] {
        return nf4->forward(in("hidden_states"), in("encoder_hidden_states"), in("pooled_projections"),
                            in("timestep"), in("img_ids"), in("txt_ids"), guidance);
      };
      const at::Tensor y = run_nf4().to(at::kFloat).cpu();
      std::printf("%s vs diffusers bf16: relative L2 error %.3e (quantization error, for scale)\n", label,
                  ((y - expected).norm() / expected.norm()).item<double>());
      time_forward(label, run_nf4, reps);
    };
    load_nf4("fluxbatch transformer nf4 (quantized on load)", files, true);
    c10::cuda::CUDACachingAllocator::emptyCache();
    if (argc > 4) load_nf4("fluxbatch transformer nf4 (bnb file)", safetensors_in(fs::path(argv[4]) / "transformer"), false);
    return rel_l2 < 1e-2 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 3;
  }
}
