// The device side of a render, made when the first image must really be rendered: the memory budget
// and monitor (RenderMemory), the residency, the FluxGenerator and its memory plan. A job whose
// images all finished earlier or come from the image cache never creates it, so it neither loads a
// weight nor touches the GPU.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/image_generator.h"
#include "fluxbatch/runtime/execution/stage_clock.h"
#include "fluxbatch/runtime/model_io/inspect.h"
#include "memory_options.h"
#include "render_memory.h"

namespace fluxbatch::app {

struct SessionSetup {
  std::string model;                    // the path given
  std::string description;              // ImageGenerator::model_description(), known without loading
  const runtime::ModelSummary* headers = nullptr;  // the model's file headers (outlives the session)
  MemoryOptions memory;
  runtime::GeneratorOptions generator;  // device, dtype, quantization, prompt cache, on_step
  bool calibrate = false;               // --batch auto
  int max_batch = 1;
  std::function<void(const std::string&)> on_stage;  // every stage mark (progress display)
};

class RenderSession : public runtime::ImageGenerator {
 public:
  RenderSession(SessionSetup setup, runtime::StageClock& clock);
  ~RenderSession() override;

  void prepare(const std::vector<const job::RenderItem*>& items) override;
  std::vector<runtime::Image> generate(const std::vector<job::RenderItem>& batch) override;
  void generate_each(const std::vector<job::RenderItem>& batch, const runtime::ImageSink& on_image) override;
  std::string model_description() const override { return setup_.description; }

  int batch_of(const job::RenderItem& item) const;  // the memory plan's batch (1 before it is made)
  int64_t in_use_bytes() const;                      // device memory in use; -1 before the device is used
  // Stops the monitor; nothing when the device was never used.
  std::optional<RenderMemory::Facts> stop();

 private:
  // Made on first use; `items` (the job's, or the first batch's) size the streaming plan.
  runtime::ImageGenerator& device(const std::vector<const job::RenderItem*>& items);

  SessionSetup setup_;
  runtime::StageClock& clock_;
  std::unique_ptr<RenderMemory> memory_;
  std::atomic<const RenderMemory*> shown_{nullptr};  // memory_ once made, for the progress thread
  std::unique_ptr<runtime::ImageGenerator> generator_;
};

}  // namespace fluxbatch::app
