// The memory planner as a pure function: from a linear memory model (weights per component, and
// per stage activation bytes = batch * (a_pixel * width * height + a_token * seq_len) * dtype_size
// + fixed) and a byte budget, the largest batch per resolution group whose every stage fits.
// No weights, no device: the model comes from defaults, file headers, or two measured peaks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::runtime {

struct ComponentWeights {
  std::string name;          // "text_encoder", "text_encoder_2", "transformer", "vae"
  int64_t weight_bytes = 0;  // resident size on the device at the run's dtype
};

// Activation bytes of one stage for a batch; linear in the batch.
struct StageCost {
  double bytes_per_pixel = 0.0;  // per image, per output pixel, per byte of the dtype
  double bytes_per_token = 0.0;  // per image, per text token (max_sequence_length), per dtype byte
  int64_t fixed_bytes = 0;       // independent of the batch (workspaces, scheduler state)
  int64_t per_image_bytes(int width, int height, int seq_len, int dtype_size) const;
  int64_t bytes(int width, int height, int seq_len, int dtype_size, int batch) const;
};

struct StageModel {
  std::string name;                   // "encode", "denoise", "decode"
  std::vector<std::string> resident;  // components on the device during this stage
  StageCost cost;
};

struct MemoryModel {
  int dtype_size = 2;  // bytes per activation element (bf16/fp16: 2, fp32: 4)
  std::vector<ComponentWeights> components;
  std::vector<StageModel> stages;  // in execution order
  bool calibrated = false;         // false: coefficients are the built-in first guesses
  int64_t weight_bytes(const std::vector<std::string>& names) const;  // InputError on an unknown name
};

// Where a pipeline's components wait between stages.
enum class Residency {
  kDevice,   // all loaded up front onto the device; the text encoders are freed after the encode stage
  kStaged,   // each stage's components loaded from disk when it starts: the text encoders and the
             // transformer + VAE are never on the device together
  kOffload,  // all loaded up front into (pinned) host memory; each stage's components visit the
             // device for that stage only
  kStream,   // as kOffload, but the transformer never is on the device whole: during the denoise stage
             // its non-block parts and its leading blocks are, and the other blocks are copied in one
             // by one while the previous one computes (nn::BlockStreamer, runtime/memory/block_stream_plan.h)
};
const char* residency_name(Residency residency);  // "device", "staged", "offload", "stream"

// What the denoise stage holds under staged residency: the transformer and the VAE.
int64_t denoise_weight_bytes(const std::vector<ComponentWeights>& components);

// The render's choice (--offload auto): stream when the transformer alone takes more than 7/8 of the
// budget (offload's denoise stage, the whole transformer on the device, would leave no room for a
// batch of activations); offload when the denoise stage's weights (transformer + VAE) take more than
// 3/4 of the budget, so that a stage keeps room for its activations; staged otherwise.
Residency choose_residency(const std::vector<ComponentWeights>& components, int64_t budget_bytes);

// FLUX.1 stages: encode (CLIP-L + T5-XXL), denoise (transformer), decode (VAE), with the components
// each stage holds on the device under `residency`. Activation coefficients are first guesses from
// ComfyUI's estimates (about 1 GiB per 1024² bf16 image for the transformer, about 4.3 GiB for the
// VAE decode), to be replaced by calibrate_stage().
MemoryModel flux_memory_model(const std::vector<ComponentWeights>& components, int dtype_size, Residency residency);

// Fits a stage's linear cost to two measured peaks (allocator bytes, resident weights included)
// of the same shape at batch 1 and batch 2: per image = peak2 - peak1, fixed = peak1 - weights -
// per image. by_tokens: the per-image part scales with the sequence length (text encoders)
// instead of the pixel count. InputError when peak2 < peak1 or the shape is empty.
StageCost calibrate_stage(int64_t peak_batch1, int64_t peak_batch2, int64_t resident_weight_bytes, int width,
                          int height, int seq_len, int dtype_size, bool by_tokens);

struct ResolutionGroup {
  int width = 0;
  int height = 0;
  int max_sequence_length = 512;
  int64_t images = 0;  // how many images of this shape the job renders
};

struct StagePlan {
  std::string name;
  std::vector<std::string> resident;
  int64_t weight_bytes = 0;
  int64_t activation_bytes = 0;
  int64_t peak_bytes = 0;  // weights + activations at the group's batch
};

struct GroupPlan {
  ResolutionGroup group;
  int batch_size = 1;
  bool fits = true;            // false: even batch 1 predicts more than the budget
  bool calibrated = false;     // the group's model was calibrated by measurement
  std::string limiting_stage;  // the stage with the highest predicted peak
  int64_t peak_bytes = 0;      // the highest stage peak at batch_size
  std::vector<StagePlan> stages;
};

struct Plan {
  int64_t budget_bytes = 0;
  int64_t peak_bytes = 0;  // highest over the groups
  bool fits = true;
  std::vector<GroupPlan> groups;  // in the order given
};

// Every stage's predicted peak for group `g` at `batch` (fits is left true; the caller compares).
GroupPlan plan_group(const MemoryModel& model, const ResolutionGroup& g, int batch);

// Largest batch in [1, min(images, max_batch)] per group whose every stage peak is within the
// budget (batch 1 when none fits, with fits = false). InputError for a budget <= 0, max_batch < 1
// or a group with a non-positive size.
Plan plan_batches(const MemoryModel& model, const std::vector<ResolutionGroup>& groups, int64_t budget_bytes,
                  int max_batch = 64);
// The same with one model per group (calibrations are per resolution): models[i] plans groups[i].
// InputError when the sizes differ.
Plan plan_batches(const std::vector<MemoryModel>& models, const std::vector<ResolutionGroup>& groups,
                  int64_t budget_bytes, int max_batch = 64);

}  // namespace fluxbatch::runtime
