#include "render_session.h"

#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/memory_calibration.h"
#include "fluxbatch/runtime/memory_planner.h"

namespace fluxbatch::app {
namespace {

// The components' residency (--offload) from the weights as they will load, logged with the reason.
runtime::Residency decide_residency(const std::string& mode, c10::Device device,
                                    const std::vector<runtime::ComponentWeights>& weights, int64_t budget_bytes) {
  const runtime::Residency residency = resolve_residency(mode, device, weights, budget_bytes);
  const std::string why = " (--offload " + mode + "; transformer + VAE " +
                          runtime::format_bytes(runtime::denoise_weight_bytes(weights)) + ", budget " +
                          runtime::format_bytes(budget_bytes) + ")";
  log::info(residency == runtime::Residency::kOffload
                ? "offload: components wait in pinned host memory and visit the device for their stage" + why
                : "staged: each stage loads its components from disk; the text encoders never share the device "
                  "with the transformer and VAE" + why);
  return residency;
}

}  // namespace

RenderSession::RenderSession(SessionSetup setup, runtime::StageClock& clock) : setup_(std::move(setup)), clock_(clock) {}

RenderSession::~RenderSession() = default;

runtime::ImageGenerator& RenderSession::device() {
  if (generator_) return *generator_;
  runtime::GeneratorOptions options = setup_.generator;
  const c10::ScalarType dtype = *options.dtype;
  // Before the model loads: the budget is enforced and the weights are counted and monitored.
  memory_ = std::make_unique<RenderMemory>(
      setup_.memory, options.device, dtype,
      runtime::model_identity(*setup_.headers, dtype, options.quantize_nf4 ? "nf4" : ""), clock_);
  shown_ = memory_.get();
  memory_->attach(options, setup_.on_stage);
  std::vector<runtime::ComponentWeights> weights = runtime::model_component_weights(
      *setup_.headers, static_cast<int>(c10::elementSize(dtype)), options.quantize_nf4);
  options.residency = decide_residency(setup_.memory.offload, options.device, weights, memory_->budget().bytes);
  generator_ = memory_->wrap(std::make_unique<runtime::FluxGenerator>(setup_.model, options), std::move(weights),
                             setup_.calibrate, setup_.max_batch);
  return *generator_;
}

void RenderSession::prepare(const std::vector<const job::RenderItem*>& items) { device().prepare(items); }

std::vector<runtime::Image> RenderSession::generate(const std::vector<job::RenderItem>& batch) {
  return device().generate(batch);
}

void RenderSession::generate_each(const std::vector<job::RenderItem>& batch, const runtime::ImageSink& on_image) {
  device().generate_each(batch, on_image);
}

int RenderSession::batch_of(const job::RenderItem& item) const { return memory_ ? memory_->batch_of(item) : 1; }

int64_t RenderSession::in_use_bytes() const {
  const RenderMemory* memory = shown_.load();
  return memory != nullptr ? memory->in_use_bytes() : -1;
}

std::optional<RenderMemory::Facts> RenderSession::stop() {
  if (!memory_) return std::nullopt;
  return memory_->stop();
}

}  // namespace fluxbatch::app
