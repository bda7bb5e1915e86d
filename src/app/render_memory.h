// Everything memory and time do around one render: the budget (enforced: CUDA allocator fraction, CPU
// counting allocator), the monitor and its stage marks, the clock per stage, calibration and the
// per-size batch of --batch auto (measured with the components the job's own stages load, so a first
// run loads nothing twice), the predicted-vs-measured note of each batch's log line, and the run's
// summary (log and manifest.jsonl).
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
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/execution/stage_clock.h"
#include "fluxbatch/runtime/memory/decode_plan.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_monitor.h"
#include "memory_options.h"

namespace fluxbatch::app {

class RenderMemory {
 public:
  // Resolves the budget, caps the CUDA allocator at it (CPU: installs the counting allocator,
  // enforcing only a --vram-budget), and starts the monitor and the clock in stage "load". Call
  // before loading. `model_identity`: runtime::model_identity, part of the calibration key.
  // `clock`: the render's stage clock (outlives this), driven by the same stage marks.
  RenderMemory(const MemoryOptions& options, c10::Device device, c10::ScalarType dtype, std::string model_identity,
               runtime::StageClock& clock);
  ~RenderMemory();

  // The generator's stage marks and per-batch note. `on_stage` (optional) also hears every mark.
  void attach(runtime::GeneratorOptions& options, std::function<void(const std::string&)> on_stage = {});

  // The generator the runner drives. Its prepare() plans memory around the job's encode stage: a
  // model per resolution group of the items to render, from the components' sizes as loaded
  // (`weights`, runtime::model_component_weights) and the pipeline's residency, with activation
  // costs from the calibration cache; with `calibrate` (--batch auto) the groups not in the cache are
  // measured: the encode stage with the text encoders loaded for the job's own encode stage, which
  // follows at once, then denoise and decode with the transformer and VAE the first batch goes on
  // with. Then the batch per group (logged). CPU with --vram-budget: inside the budget's scope.
  std::unique_ptr<runtime::ImageGenerator> wrap(std::unique_ptr<runtime::FluxGenerator> generator,
                                                std::vector<runtime::ComponentWeights> weights, bool calibrate,
                                                int max_batch);
  int batch_of(const job::RenderItem& item) const;  // the plan's batch for the item's shape (1 before the plan)

  // Memory in use now (reserved by the CUDA allocator; live bytes on the CPU), from the monitor.
  int64_t in_use_bytes() const;

  // Stops the monitor; what the run's report says about the device.
  struct Facts {
    std::string device;
    int64_t budget_bytes = 0;
    std::string allocator;
    runtime::MemoryReport memory;
  };
  Facts stop();

  const Budget& budget() const { return budget_; }

 private:
  class PlanningGenerator;
  using Shape = std::tuple<int, int, int>;
  void set_stage(const std::string& stage);
  void plan(runtime::FluxPipeline& pipeline, const std::vector<runtime::ComponentWeights>& weights,
            const std::vector<const job::RenderItem*>& items, bool calibrate, int max_batch,
            const std::function<void()>& encode_stage);
  std::string note(const std::vector<job::RenderItem>& batch);
  int64_t measured_peak() const;
  void reset_peak() const;

  c10::Device device_;
  c10::ScalarType dtype_;
  std::string model_identity_;
  runtime::VaeTiles vae_tiles_;  // --vae-tiles, for the decode stage's plan
  Budget budget_;
  std::shared_ptr<runtime::CpuMemoryBudget> cpu_;
  std::unique_ptr<runtime::MemoryMonitor> monitor_;
  runtime::StageClock& clock_;
  std::function<void(const std::string&)> on_stage_;
  std::map<Shape, runtime::MemoryModel> models_;
  std::map<Shape, int> batches_;
  runtime::MemoryModel fallback_;  // built-in estimates for shapes not planned
  std::string stage_;              // the current stage ("" between batches)
};

}  // namespace fluxbatch::app
