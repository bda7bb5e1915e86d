// Memory options shared by render and plan, and what they resolve to on this machine: the budget
// (the smaller of --vram-budget and what is free minus --vram-reserve), the resolution groups of a
// job, and the memory model per group (a calibration from the cache, else the built-in estimates).
#pragma once
#include <CLI/CLI.hpp>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/memory/block_stream_plan.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "fluxbatch/runtime/memory/memory_planner.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::app {

// Kept free on the device: CUDA loads kernel images lazily (cuBLAS, cuDNN and torch's own kernels
// add a few hundred MiB to the context after start-up, outside the caching allocator), and other
// processes (a desktop, a second job) may grow. ComfyUI keeps 400 MiB on Linux for the same reasons.
inline constexpr const char* kDefaultVramReserve = "512M";

struct MemoryOptions {
  std::string budget;                       // --vram-budget; "" = what is free
  std::string reserve = kDefaultVramReserve;  // --vram-reserve
  int monitor_interval_ms = 100;            // --monitor-interval (render only); 0 = off
  double monitor_threshold = 0.9;           // --monitor-threshold (render only)
  std::string offload = "auto";             // --offload auto|on|off|stream
  std::string vae_tiles = "auto";           // --vae-tiles auto|off|on|PIXELS (runtime::parse_vae_tiles)
};
void add_memory_options(CLI::App& command, MemoryOptions& options, bool monitor);

struct Budget {
  int64_t bytes = 0;
  bool user_given = false;  // --vram-budget was given
  std::string how;          // "7.50 GiB (--vram-budget)", "73.2 GiB (free 73.7 GiB - reserve 512 MiB)"
};
// CUDA: min(--vram-budget, usable - reserve) where usable = cudaMemGetInfo free + what the caching
// allocator holds unused. CPU: --vram-budget, else MemAvailable - reserve. InputError for bad sizes,
// DeviceError when nothing is left after the reserve.
Budget resolve_budget(c10::Device device, const MemoryOptions& options);

// The job's items grouped by (width, height, max_sequence_length), in first-seen order.
std::vector<runtime::ResolutionGroup> resolution_groups(const std::vector<const job::RenderItem*>& items);
std::vector<runtime::ResolutionGroup> resolution_groups(const job::JobSpec& spec);

// Where the components wait between stages (--offload): on = offloaded to pinned host memory, off =
// staged (each stage loads its own from disk), stream = offloaded with the transformer streamed block
// by block (on the CPU too, where the counting budget stands for the device), auto =
// runtime::choose_residency on CUDA and staged on the CPU (there the device is the host).
// `weights`: runtime::model_component_weights.
runtime::Residency resolve_residency(const std::string& offload, c10::Device device,
                                     const std::vector<runtime::ComponentWeights>& weights, int64_t budget_bytes);

// Streaming: how many transformer blocks stay resident for the denoise stage, and T5 blocks for the
// encode stage. Leaves room for the stage's activations of each group at min(its images, max_batch)
// (and for CLIP in the encode stage), by `models` (one per group: the built-in estimate or the
// group's cached calibration); unless `batch_fixed`, when even no resident transformer block leaves
// that room, for the batches the planner then picks (a larger batch amortises the bytes streamed per
// step, so the batch comes first). `weights`: as for resolve_residency.
struct StreamingPlan {
  runtime::BlockStreamPlan transformer;
  runtime::BlockStreamPlan t5;
  std::vector<runtime::ComponentWeights> weights;  // `weights` with both as their stages hold them
};
StreamingPlan plan_streaming(const runtime::ModelFiles& files, const std::vector<runtime::ComponentWeights>& weights,
                             int dtype_size, const std::vector<runtime::ResolutionGroup>& groups,
                             const std::vector<runtime::MemoryModel>& models, int max_batch, bool batch_fixed,
                             int64_t budget_bytes);
// The same with each group's model from `cache`: its calibration for this device and model where the
// cache has the group, else the built-in estimates of the streaming residency (what render and plan use).
StreamingPlan plan_streaming(const runtime::ModelFiles& files, const std::vector<runtime::ComponentWeights>& weights,
                             int dtype_size, const std::vector<runtime::ResolutionGroup>& groups,
                             const runtime::CalibrationCache& cache, const std::string& device_identity,
                             const std::string& model_identity, int max_batch, bool batch_fixed, int64_t budget_bytes);

runtime::CalibrationKey calibration_key(const std::string& device_identity, const std::string& model_identity,
                                        const runtime::ResolutionGroup& group);

// The model of each group: its cached calibration applied, else `base` (the built-in estimates).
std::vector<runtime::MemoryModel> models_for_groups(const runtime::MemoryModel& base,
                                                    const std::vector<runtime::ResolutionGroup>& groups,
                                                    const runtime::CalibrationCache& cache,
                                                    const std::string& device_identity,
                                                    const std::string& model_identity);

}  // namespace fluxbatch::app
