// Everything memory does around one render: the budget (enforced: CUDA allocator fraction, CPU
// counting allocator), the monitor and its stage marks, calibration and the per-size batch of
// --batch auto, the predicted-vs-measured note of each batch's log line, and the run's summary
// (log and manifest.jsonl).
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/flux_generator.h"
#include "fluxbatch/runtime/job_runner.h"
#include "fluxbatch/runtime/memory_budget.h"
#include "fluxbatch/runtime/memory_monitor.h"
#include "memory_options.h"

namespace fluxbatch::app {

class RenderMemory {
 public:
  // Resolves the budget, caps the CUDA allocator at it (CPU: installs the counting allocator,
  // enforcing only a --vram-budget), and starts the monitor in stage "load". Call before loading.
  // `model_identity`: runtime::model_identity, part of the calibration key.
  RenderMemory(const MemoryOptions& options, c10::Device device, c10::ScalarType dtype, std::string model_identity);
  ~RenderMemory();

  // The generator's stage marks and per-batch note.
  void attach(runtime::GeneratorOptions& options);
  // CPU with --vram-budget: the generator inside the budget's enforcement scope.
  std::unique_ptr<runtime::ImageGenerator> wrap(std::unique_ptr<runtime::ImageGenerator> generator);

  // A model per resolution group of `items` from the components' sizes as loaded (`weights`,
  // runtime::model_component_weights) and the pipeline's residency, with activation costs from the
  // calibration cache (measured on `pipeline` now and cached when `calibrate` and missing) and, for
  // --batch auto, the planned batch per group (logged).
  void plan(runtime::FluxPipeline& pipeline, const std::vector<runtime::ComponentWeights>& weights,
            const std::vector<const job::RenderItem*>& items, bool calibrate, int max_batch);
  std::function<int(const job::RenderItem&)> batch_for() const;  // the plan's batch per shape
  int largest_batch() const;

  // Stops the monitor, logs the memory summary and appends {"event": "summary"} to the manifest.
  void finish(const runtime::RunSummary& summary, const std::string& output_dir);

  const Budget& budget() const { return budget_; }

 private:
  using Shape = std::tuple<int, int, int>;
  std::string note(const std::vector<job::RenderItem>& batch);
  int64_t measured_peak() const;
  void reset_peak() const;

  c10::Device device_;
  c10::ScalarType dtype_;
  std::string model_identity_;
  Budget budget_;
  std::shared_ptr<runtime::CpuMemoryBudget> cpu_;
  std::unique_ptr<runtime::MemoryMonitor> monitor_;
  std::map<Shape, runtime::MemoryModel> models_;
  std::map<Shape, int> batches_;
  runtime::MemoryModel fallback_;  // built-in estimates for shapes not planned
  std::string stage_;              // the generator's current stage ("" between batches)
};

}  // namespace fluxbatch::app
