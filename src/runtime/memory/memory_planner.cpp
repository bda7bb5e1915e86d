#include "fluxbatch/runtime/memory/memory_planner.h"

#include <algorithm>
#include <cmath>

#include "fluxbatch/core/error.h"

namespace fluxbatch::runtime {
namespace {

// First guesses, per pixel (or token) per dtype byte; see flux_memory_model's comment.
// Transformer: ComfyUI's area * dtype * 0.01 * 3.1 MiB with area = pixels / 64.
constexpr double kDenoisePerPixel = 0.01 * 3.1 * 1024.0 * 1024.0 / 64.0;  // ~508
// VAE decode: ComfyUI's 2178 * latent_h * latent_w * 64 * dtype bytes = 2178 * pixels * dtype.
constexpr double kDecodePerPixel = 2178.0;
// T5-XXL per token: a few hidden (4096) and feed-forward (10240) rows alive at once.
constexpr double kEncodePerToken = 4.0 * 4096.0 + 2.0 * 10240.0;
constexpr int64_t kFixedBytes = int64_t{64} << 20;  // workspaces, RoPE tables, scheduler state

StagePlan plan_stage(const MemoryModel& model, const StageModel& stage, const ResolutionGroup& g, int batch) {
  StagePlan s;
  s.name = stage.name;
  s.resident = stage.resident;
  s.weight_bytes = model.weight_bytes(stage.resident);
  s.activation_bytes = stage.cost.bytes(g.width, g.height, g.max_sequence_length, model.dtype_size, batch);
  s.peak_bytes = s.weight_bytes + s.activation_bytes;
  return s;
}

}  // namespace

GroupPlan plan_group(const MemoryModel& model, const ResolutionGroup& g, int batch) {
  GroupPlan plan;
  plan.group = g;
  plan.batch_size = batch;
  plan.calibrated = model.calibrated;
  for (const StageModel& stage : model.stages) {
    plan.stages.push_back(plan_stage(model, stage, g, batch));
    if (plan.stages.back().peak_bytes > plan.peak_bytes || plan.limiting_stage.empty()) {
      plan.peak_bytes = plan.stages.back().peak_bytes;
      plan.limiting_stage = stage.name;
    }
  }
  return plan;
}

int64_t StageCost::per_image_bytes(int width, int height, int seq_len, int dtype_size) const {
  const double pixels = static_cast<double>(width) * static_cast<double>(height);
  return static_cast<int64_t>(
      std::ceil((bytes_per_pixel * pixels + bytes_per_token * static_cast<double>(seq_len)) * dtype_size));
}

int64_t StageCost::bytes(int width, int height, int seq_len, int dtype_size, int batch) const {
  return fixed_bytes + per_image_bytes(width, height, seq_len, dtype_size) * batch;
}

int64_t MemoryModel::weight_bytes(const std::vector<std::string>& names) const {
  int64_t total = 0;
  for (const std::string& name : names) {
    const auto it = std::find_if(components.begin(), components.end(),
                                 [&](const ComponentWeights& c) { return c.name == name; });
    if (it == components.end()) throw InputError("memory model: no component named '" + name + "'");
    total += it->weight_bytes;
  }
  return total;
}

const char* residency_name(Residency residency) {
  switch (residency) {
    case Residency::kDevice: return "device";
    case Residency::kStaged: return "staged";
    case Residency::kOffload: return "offload";
    case Residency::kStream: return "stream";
  }
  return "?";
}

int64_t denoise_weight_bytes(const std::vector<ComponentWeights>& components) {
  int64_t total = 0;
  for (const ComponentWeights& c : components) {
    if (c.name == "transformer" || c.name == "vae") total += c.weight_bytes;
  }
  return total;
}

Residency choose_residency(const std::vector<ComponentWeights>& components, int64_t budget_bytes) {
  int64_t transformer = 0;
  for (const ComponentWeights& c : components) {
    if (c.name == "transformer") transformer = c.weight_bytes;
  }
  if (transformer > budget_bytes / 8 * 7) return Residency::kStream;
  return denoise_weight_bytes(components) > budget_bytes / 4 * 3 ? Residency::kOffload : Residency::kStaged;
}

MemoryModel flux_memory_model(const std::vector<ComponentWeights>& components, int dtype_size, Residency residency) {
  MemoryModel model;
  model.dtype_size = dtype_size;
  model.components = components;
  const std::vector<std::string> text = {"text_encoder", "text_encoder_2"};
  const std::vector<std::string> denoisers = {"transformer", "vae"};
  const std::vector<std::string> all = {"text_encoder", "text_encoder_2", "transformer", "vae"};
  // Stage-major execution (FluxGenerator::prepare) frees the text encoders after the encode stage in
  // every mode, so denoise and decode never count them.
  // Streaming: the caller passes the transformer's weight as the stage holds it (streamed_components).
  const bool offload = residency == Residency::kOffload || residency == Residency::kStream;
  const std::vector<std::string>& encode = residency == Residency::kDevice ? all : text;
  model.stages.push_back({"encode", encode, {0.0, kEncodePerToken, kFixedBytes}});
  model.stages.push_back(
      {"denoise", offload ? std::vector<std::string>{"transformer"} : denoisers, {kDenoisePerPixel, 0.0, kFixedBytes}});
  model.stages.push_back({"decode", offload ? std::vector<std::string>{"vae"} : denoisers, {kDecodePerPixel, 0.0, kFixedBytes}});
  return model;
}

StageCost calibrate_stage(int64_t peak_batch1, int64_t peak_batch2, int64_t resident_weight_bytes, int width,
                          int height, int seq_len, int dtype_size, bool by_tokens) {
  if (peak_batch2 < peak_batch1) {
    throw InputError("calibration: the batch-2 peak (" + std::to_string(peak_batch2) +
                     " B) is below the batch-1 peak (" + std::to_string(peak_batch1) + " B)");
  }
  const double units = by_tokens ? static_cast<double>(seq_len) : static_cast<double>(width) * height;
  if (units <= 0.0 || dtype_size <= 0) throw InputError("calibration: empty shape or dtype");
  const int64_t per_image = peak_batch2 - peak_batch1;
  StageCost cost;
  const double coefficient = static_cast<double>(per_image) / (units * dtype_size);
  (by_tokens ? cost.bytes_per_token : cost.bytes_per_pixel) = coefficient;
  cost.fixed_bytes = std::max<int64_t>(0, peak_batch1 - resident_weight_bytes - per_image);
  return cost;
}

Plan plan_batches(const MemoryModel& model, const std::vector<ResolutionGroup>& groups, int64_t budget_bytes,
                  int max_batch) {
  return plan_batches(std::vector<MemoryModel>(groups.size(), model), groups, budget_bytes, max_batch);
}

Plan plan_batches(const std::vector<MemoryModel>& models, const std::vector<ResolutionGroup>& groups,
                  int64_t budget_bytes, int max_batch) {
  if (models.size() != groups.size()) {
    throw InputError("memory plan: " + std::to_string(models.size()) + " models for " +
                     std::to_string(groups.size()) + " resolution groups");
  }
  if (budget_bytes <= 0) throw InputError("memory budget must be positive, got " + std::to_string(budget_bytes));
  if (max_batch < 1) throw InputError("max batch must be at least 1, got " + std::to_string(max_batch));
  Plan plan;
  plan.budget_bytes = budget_bytes;
  for (size_t i = 0; i < groups.size(); ++i) {
    const ResolutionGroup& g = groups[i];
    const MemoryModel& model = models[i];
    if (g.width <= 0 || g.height <= 0 || g.max_sequence_length <= 0) {
      throw InputError("resolution group " + std::to_string(g.width) + "x" + std::to_string(g.height) +
                       ": sizes must be positive");
    }
    const int most = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g.images, max_batch)));
    GroupPlan best = plan_group(model, g, 1);
    best.fits = best.peak_bytes <= budget_bytes;
    for (int b = 2; best.fits && b <= most; ++b) {  // peaks grow with the batch: stop at the first miss
      GroupPlan next = plan_group(model, g, b);
      if (next.peak_bytes > budget_bytes) break;
      best = std::move(next);
    }
    plan.peak_bytes = std::max(plan.peak_bytes, best.peak_bytes);
    plan.fits = plan.fits && best.fits;
    plan.groups.push_back(std::move(best));
  }
  return plan;
}

}  // namespace fluxbatch::runtime
