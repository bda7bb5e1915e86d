// The FLUX.1 ImageGenerator the CLI's render command uses: FluxPipeline behind the job runner's seam,
// with a cache of prompt embeddings so repeated prompts are encoded once per run.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/image_generator.h"
#include "fluxbatch/runtime/pipeline.h"

namespace fluxbatch::runtime {

struct GeneratorOptions {
  c10::Device device = c10::Device(c10::kCPU);
  std::optional<c10::ScalarType> dtype;  // default: bf16 on CUDA, fp32 on the CPU
  bool offload = false;                  // see PipelineOptions::offload
  bool keep_text_encoders = true;        // see PipelineOptions::keep_text_encoders
  bool quantize_nf4 = false;             // PipelineOptions::quantize_nf4 and quantize_t5_nf4 (--quantize nf4)
  size_t prompt_cache_size = 64;         // distinct (prompt, max_sequence_length) embeddings kept
  // Called after every denoising step of a batch (1-based step, total steps). Unset: debug log.
  std::function<void(int step, int steps)> on_step;
  // Memory accounting (the CLI's monitor and planner). on_stage: called with "encode", "denoise",
  // "decode" as each stage starts (after the peak reset) and "" when the batch is done. memory_note:
  // appended to the batch's log line, e.g. the predicted peak next to the measured one.
  std::function<void(const std::string& stage)> on_stage;
  std::function<std::string(const std::vector<job::RenderItem>& batch)> memory_note;
};

// PipelineOptions from GeneratorOptions (resolves the default dtype).
PipelineOptions pipeline_options(const GeneratorOptions& options);

class FluxGenerator : public ImageGenerator {
 public:
  FluxGenerator(const std::string& model_path, const GeneratorOptions& options);
  ~FluxGenerator() override;

  // Items must share width, height, steps and max_sequence_length (InputError otherwise); prompt,
  // seed and guidance are per item. Returns one image per item, in order.
  std::vector<Image> generate(const std::vector<job::RenderItem>& batch) override;
  std::string model_description() const override;

  FluxPipeline& pipeline() { return *pipeline_; }

 private:
  PromptEmbeddings embeddings_for(const std::vector<job::RenderItem>& batch, int max_sequence_length);

  struct Cache;
  GeneratorOptions options_;
  std::unique_ptr<FluxPipeline> pipeline_;
  std::unique_ptr<Cache> cache_;
};

// The factory the CLI calls. ModelError / DeviceError when the model cannot be loaded.
std::unique_ptr<ImageGenerator> make_flux_generator(const std::string& model_path, const GeneratorOptions& options);

}  // namespace fluxbatch::runtime
