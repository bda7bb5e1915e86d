// GPU timing of ops::per_image_linear (a GEMM per image, so an image never depends on its batch)
// against at::linear folding the batch into one GEMM, on FLUX.1-dev's Linear shapes at 1024x1024.
// Not a test: scripts/bench/run_h100.sh runs it. Prints, per shape and batch: both median times, the
// cost of going per image, and how many output values the folded GEMM rounds differently from the
// same image computed alone (what per-image GEMMs avoid).
//   fluxbatch_bench_per_image_linear [reps]
#include "fluxbatch/ops/per_image_linear.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

template <typename Fn>
double median_ms(const Fn& run, int reps) {
  std::vector<double> ms;
  for (int i = 0; i < reps + 2; ++i) {
    c10::cuda::device_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    run();
    c10::cuda::device_synchronize();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Shape {
  const char* name;
  int64_t rows;  // per image: tokens (4096 image + 512 text in the single blocks), or 1 (modulation)
  int64_t in, out;
};

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  const c10::InferenceMode inference;
  at::manual_seed(0);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const Shape shapes[] = {
      {"single proj_mlp", 4608, 3072, 12288}, {"single proj_out", 4608, 15360, 3072},
      {"single to_q", 4608, 3072, 3072},      {"double ff.net.2", 4096, 12288, 3072},
      {"modulation (norm.linear)", 1, 3072, 18432},
  };
  std::printf("%-26s %5s %12s %12s %8s %s\n", "shape", "batch", "folded ms", "per-image ms", "cost", "values differing");
  double folded_total = 0, per_image_total = 0;
  for (const Shape& s : shapes) {
    const at::Tensor w = at::randn({s.out, s.in}, bf16).mul_(0.02);
    const at::Tensor bias = at::randn({s.out}, bf16);
    for (const int64_t batch : {1, 4, 16}) {
      const at::Tensor x = s.rows == 1 ? at::randn({batch, s.in}, bf16) : at::randn({batch, s.rows, s.in}, bf16);
      const double folded = median_ms([&] { (void)at::linear(x, w, bias); }, reps);
      const double per_image = median_ms([&] { (void)fluxbatch::ops::per_image_linear(x, w, bias); }, reps);
      const at::Tensor a = at::linear(x, w, bias);
      const at::Tensor b = fluxbatch::ops::per_image_linear(x, w, bias);
      const int64_t differing = a.ne(b).sum().item<int64_t>();
      std::printf("%-26s %5lld %12.3f %12.3f %+7.1f%% %lld of %lld\n", s.name, static_cast<long long>(batch), folded,
                  per_image, 100.0 * (per_image - folded) / folded, static_cast<long long>(differing),
                  static_cast<long long>(a.numel()));
      if (batch == 16) {
        folded_total += folded;
        per_image_total += per_image;
      }
    }
  }
  std::printf("batch 16, these shapes together: folded %.2f ms, per image %.2f ms (%+.1f%%)\n", folded_total,
              per_image_total, 100.0 * (per_image_total - folded_total) / folded_total);
  return 0;
}
