// The FLUX.1 ImageGenerator the CLI's render command uses: FluxPipeline behind the job runner's seam,
// with a cache of prompt embeddings so repeated prompts are encoded once per run.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/cache/prompt_cache.h"
#include "fluxbatch/runtime/execution/image_generator.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/memory/decode_plan.h"

namespace fluxbatch::runtime {

struct GeneratorOptions {
  c10::Device device = c10::Device(c10::kCPU);
  std::optional<c10::ScalarType> dtype;  // default: bf16 on CUDA, fp32 on the CPU
  Residency residency = Residency::kDevice;  // see PipelineOptions::residency
  int resident_blocks = 0;                   // PipelineOptions::resident_blocks (kStream)
  int t5_resident_blocks = 0;                // PipelineOptions::t5_resident_blocks (kStream)
  int stream_slots = 2;                      // PipelineOptions::stream_slots (kStream)
  bool keep_text_encoders = true;        // see PipelineOptions::keep_text_encoders
  bool quantize_nf4 = false;             // PipelineOptions::quantize_nf4 and quantize_t5_nf4 (--quantize nf4)
  bool cuda_graphs = true;               // PipelineOptions::cuda_graphs (--cuda-graphs)
  bool compute_fp8 = false;              // PipelineOptions::compute_fp8 (--compute fp8)
  bool attention_fp8 = false;            // PipelineOptions::attention_fp8 (--attention fp8)
  bool fp8_from_nf4 = false;             // PipelineOptions::fp8_from_nf4 (the memory plan's choice)
  size_t prompt_cache_size = 64;         // distinct (prompt, max_sequence_length) embeddings kept
  // prepare(): host (CPU) bytes of prompt embeddings encoded ahead of the denoise stage. Prompts
  // beyond it are encoded later, a window at a time, as their batches come (text encoders loaded
  // again for each window); embeddings whose items are all rendered make room.
  int64_t prepared_embedding_bytes = int64_t{2} << 30;
  // --vae-tiles: whole-image or exact tiled VAE decode (runtime/memory/decode_plan.h), planned per
  // image size against decode_budget_bytes (0: unknown, so auto decodes whole) with what is allocated
  // on the device when the decode starts. Whatever was planned, a decode that runs out of memory at
  // batch 1 goes on in exact tiles (maps to host memory on CUDA, then tiles halved down to 64 px),
  // except with --vae-tiles off.
  VaeTiles vae_tiles;
  int64_t decode_budget_bytes = 0;
  // A whole decode's activation bytes at a size as calibration measured them (0 or unset: predicted
  // by runtime::untiled_decode_bytes), so that the decode's plan and the batch plan agree.
  std::function<int64_t(int width, int height)> calibrated_decode_bytes;
  // Called after every denoising step of a batch (1-based step, total steps). Unset: debug log.
  std::function<void(int step, int steps)> on_step;
  // Memory and time accounting (the CLI's monitor, planner and summary). on_stage: called with
  // "encode" (prepare, and a batch whose prompts were not prepared), "denoise", "decode" as each stage
  // starts, "load" while components load from disk (within encode, before denoise), and "" when the
  // encode stage or a batch is done. memory_note:
  // appended to the batch's log line, e.g. the predicted peak next to the measured one.
  std::function<void(const std::string& stage)> on_stage;
  std::function<std::string(const std::vector<job::RenderItem>& batch)> memory_note;
  // Prompt embeddings on disk (--cache): read before encoding, written after. Null: none. (Prompts
  // encoded with a CLIP LoRA are not stored there: its key does not name LoRAs.)
  std::shared_ptr<PromptCache> prompt_cache;
  // The job's LoRAs (LoraCatalog::load), applied per item as side paths. Null: none.
  std::shared_ptr<const LoraCatalog> loras;
  bool merge_loras = false;  // PipelineOptions::merge_loras (--lora-merge)
};

// PipelineOptions from GeneratorOptions (resolves the default dtype).
PipelineOptions pipeline_options(const GeneratorOptions& options);

// What the stages did, for logs and tests.
struct GeneratorStats {
  int64_t prompts_encoded = 0;       // (prompt, max_sequence_length) pairs run through CLIP + T5
  int64_t encode_stages = 0;         // prepare() passes: encode a window of prompts, then free the encoders
  int64_t cpu_encode_fallbacks = 0;  // encodes that ran out of device memory and moved the encoders to the CPU
  int64_t t5_stream_retries = 0;     // encodes that ran out of device memory and streamed more of T5 (kStream)
  int64_t tiled_decodes = 0;         // images decoded in exact tiles (planned, or after running out of memory)
  int64_t prompts_from_cache = 0;    // embeddings read from GeneratorOptions::prompt_cache instead
};

// Stage-major: prepare() encodes every distinct prompt of the job (within
// prepared_embedding_bytes), keeps the embeddings in host memory and frees the text encoders;
// generate_each() then denoises a batch and decodes its images one by one, handing each over as
// soon as it is decoded. The device cache is emptied between stages, not per step or per image.
// Errors other than out of memory become model / device errors naming the stage and the batch
// (runtime::throw_stage_error), which stop the job. The VAE decode is whole or in exact tiles as
// planned (GeneratorOptions::vae_tiles). Out-of-memory fallbacks (each logged and counted): a whole
// VAE decode that does not fit even at batch 1 is redone in exact tiles (at larger batches the
// out-of-memory error goes to the runner, which halves the batch first); an encode that does not fit
// on the device streams more of T5 while some of its blocks are resident (kStream), then runs the text
// encoders on the CPU.
class FluxGenerator : public ImageGenerator {
 public:
  FluxGenerator(const std::string& model_path, const GeneratorOptions& options);
  ~FluxGenerator() override;

  void prepare(const std::vector<const job::RenderItem*>& items) override;
  // Items must share width, height, steps and max_sequence_length (InputError otherwise); prompt,
  // seed and guidance are per item. Returns one image per item, in order.
  std::vector<Image> generate(const std::vector<job::RenderItem>& batch) override;
  void generate_each(const std::vector<job::RenderItem>& batch, const ImageSink& on_image) override;
  std::string model_description() const override;

  FluxPipeline& pipeline() { return *pipeline_; }
  const GeneratorStats& stats() const { return stats_; }

 private:
  // generate_each's work; `stage_name` follows the stage running, for the error that stops the job.
  void render_batch(const std::vector<job::RenderItem>& batch, const ImageSink& on_image, const char*& stage_name);
  // A prompt embedding: the prompt, max_sequence_length and the CLIP LoRAs it was encoded with.
  struct Key {
    std::string prompt;
    int max_sequence_length = 0;
    nn::LoraSet text_loras;
    bool operator<(const Key& o) const {
      return std::tie(prompt, max_sequence_length, text_loras) < std::tie(o.prompt, o.max_sequence_length, o.text_loras);
    }
    bool operator==(const Key& o) const {
      return prompt == o.prompt && max_sequence_length == o.max_sequence_length && text_loras == o.text_loras;
    }
  };
  Key key_of(const job::RenderItem& item, int max_sequence_length) const;
  PromptEmbeddings embeddings_for(const std::vector<job::RenderItem>& batch, int max_sequence_length);
  PromptEmbeddings encode(const std::vector<std::string>& prompts, int max_sequence_length,
                          const nn::LoraSet& text_loras = {});
  void encode_window(const std::vector<Key>& needed);
  void load_text_encoders();
  std::optional<std::pair<at::Tensor, at::Tensor>> cached_embedding(const Key& key);
  void store_embedding(const Key& key, const at::Tensor& prompt_embeds, const at::Tensor& pooled);
  void rendered(const Key& key);
  at::Tensor decode_image(const at::Tensor& latents, int64_t index, int width, int height, bool last_resort);

  struct Cache;
  struct Prepared;
  GeneratorOptions options_;
  std::unique_ptr<FluxPipeline> pipeline_;
  std::unique_ptr<Cache> cache_;
  std::unique_ptr<Prepared> prepared_;
  std::map<std::pair<int, int>, DecodePlan> decode_plans_;  // (width, height) -> the decode that fitted
  GeneratorStats stats_;
};

// The factory the CLI calls. ModelError / DeviceError when the model cannot be loaded.
std::unique_ptr<ImageGenerator> make_flux_generator(const std::string& model_path, const GeneratorOptions& options);

}  // namespace fluxbatch::runtime
