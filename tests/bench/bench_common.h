// What the GPU benchmark tools share (header-only: each tool is one executable): the figures a tool
// prints and writes to --json, wall-clock and CUDA-event timing, the random transformer inputs the
// forward benchmarks feed, and the safetensors files of a folder.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/sampling/latents.h"

namespace fluxbatch::bench {

// name -> value, in name order; print_format (e.g. "  %-28s %.4g\n" or "%s=%.6g\n"): how figure() echoes
// each one as it is taken (empty: silent).
class Figures {
 public:
  explicit Figures(std::string print_format = "") : format_(std::move(print_format)) {}
  void operator()(const std::string& name, double value) {
    values_[name] = value;
    if (format_.empty()) return;
    std::printf(format_.c_str(), name.c_str(), value);
    std::fflush(stdout);
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  double at(const std::string& name) const { return values_.at(name); }
  const std::map<std::string, double>& all() const { return values_; }
  // One JSON object of every figure; a message on stderr when the file cannot be written.
  void write_json(const std::string& path) const {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return;
    }
    std::fprintf(f, "{\n");
    size_t i = 0;
    for (const auto& [name, value] : values_) {
      std::fprintf(f, "  \"%s\": %.6g%s\n", name.c_str(), value, ++i < values_.size() ? "," : "");
    }
    std::fprintf(f, "}\n");
    std::fclose(f);
  }

 private:
  std::string format_;
  std::map<std::string, double> values_;
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline std::vector<std::string> safetensors_in(const std::filesystem::path& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

inline int64_t allocated_now() { return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current; }
inline int64_t allocated_peak() { return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak; }

// Median of `reps` timed calls (CUDA events) after 2 warm-ups; with peak_extra_gib, also the peak
// memory a call adds above what was allocated before.
inline double median_ms(const std::function<void()>& fn, int reps, double* peak_extra_gib = nullptr) {
  for (int i = 0; i < 2; ++i) fn();
  c10::cuda::device_synchronize();
  const int64_t base = allocated_now();
  c10::cuda::CUDACachingAllocator::resetPeakStats(0);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    fn();
    stop.record();
    stop.synchronize();
    ms.push_back(start.elapsed_time(stop));
  }
  if (peak_extra_gib) *peak_extra_gib = static_cast<double>(allocated_peak() - base) / double(1 << 30);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// One transformer forward's inputs, on the GPU in the model dtype (guidance fp32, as the pipeline passes it).
struct Inputs {
  at::Tensor hidden, encoder, pooled, timestep, img_ids, txt_ids, guidance;
};

// Random inputs shaped like the pipeline's for `size` x `size` images, `batch` of them, `text_len` T5 tokens.
inline Inputs random_inputs(const models::flux::FluxConfig& c, int size, int64_t batch = 1, int64_t text_len = 512,
                            at::ScalarType dtype = at::kBFloat16) {
  at::manual_seed(1234);
  const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
  const auto lat = sampling::latent_size(size, size);
  Inputs in;
  in.hidden = at::randn({batch, lat.seq_len(), c.in_channels}, opt);
  in.encoder = at::randn({batch, text_len, c.joint_attention_dim}, opt);
  in.pooled = at::randn({batch, c.pooled_projection_dim}, opt);
  in.timestep = at::full({batch}, 0.75, opt);
  in.img_ids = sampling::latent_image_ids(lat, dtype, at::Device(at::kCUDA));
  in.txt_ids = at::zeros({text_len, 3}, opt);
  if (c.guidance_embeds) in.guidance = at::full({batch}, 3.5, opt.dtype(at::kFloat));
  return in;
}

inline at::Tensor forward(const models::flux::FluxTransformer2DModel& model, const Inputs& in) {
  return model->forward(in.hidden, in.encoder, in.pooled, in.timestep, in.img_ids, in.txt_ids, in.guidance);
}

}  // namespace fluxbatch::bench
