#include "render_session.h"

#include "speed_options.h"

#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "fluxbatch/runtime/memory/memory_planner.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::app {
namespace {

// The components' residency (--offload) from the weights as they will load, logged with the reason.
runtime::Residency decide_residency(const std::string& mode, c10::Device device,
                                    const std::vector<runtime::ComponentWeights>& weights, int64_t budget_bytes) {
  const runtime::Residency residency = resolve_residency(mode, device, weights, budget_bytes);
  const std::string why = " (--offload " + mode + "; transformer + VAE " +
                          runtime::format_bytes(runtime::denoise_weight_bytes(weights)) + ", budget " +
                          runtime::format_bytes(budget_bytes) + ")";
  if (residency == runtime::Residency::kStream) {
    log::info("stream: components wait in host memory and visit the device for their stage; the transformer's "
              "blocks are streamed through the denoise stage" + why);
  } else {
    log::info(residency == runtime::Residency::kOffload
                  ? "offload: components wait in pinned host memory and visit the device for their stage" + why
                  : "staged: each stage loads its components from disk; the text encoders never share the device "
                    "with the transformer and VAE" + why);
  }
  return residency;
}

// --compute fp8 with NF4 weights at hand (an NF4 file, or --quantize nf4): fp8 weights resident (fastest)
// unless the transformer and VAE would then take more than 3/4 of the budget (the rule --offload auto
// uses), in which case the transformer stays NF4 and each layer is made fp8 at each call. Logged.
void choose_fp8_weights(const runtime::ModelSummary& headers, c10::ScalarType dtype, int64_t budget,
                        runtime::GeneratorOptions& options, std::vector<runtime::ComponentWeights>& weights) {
  bool nf4_at_hand = options.quantize_nf4;
  for (const auto& c : headers.components) nf4_at_hand |= c.name == "transformer" && c.quantization == "bnb-nf4";
  const int64_t fp8_bytes = runtime::denoise_weight_bytes(weights);
  if (nf4_at_hand && fp8_bytes > budget / 4 * 3) {
    options.fp8_from_nf4 = true;
    weights = runtime::model_component_weights(headers, static_cast<int>(c10::elementSize(dtype)), options.quantize_nf4,
                                               /*fp8=*/false);
    log::info("fp8 compute from NF4: the transformer stays NF4 and each layer is made fp8 at each call (transformer "
              "+ VAE " + runtime::format_bytes(runtime::denoise_weight_bytes(weights)) + "; with fp8 weights they "
              "would take " + runtime::format_bytes(fp8_bytes) + ", over 3/4 of the budget " +
              runtime::format_bytes(budget) + ")");
  } else {
    log::info("fp8 compute: the transformer's Linears hold fp8 weights (transformer + VAE " +
              runtime::format_bytes(fp8_bytes) + ", budget " + runtime::format_bytes(budget) + ")");
  }
}

}  // namespace

RenderSession::RenderSession(SessionSetup setup, runtime::StageClock& clock) : setup_(std::move(setup)), clock_(clock) {}

RenderSession::~RenderSession() = default;

runtime::ImageGenerator& RenderSession::device(const std::vector<const job::RenderItem*>& items) {
  if (generator_) return *generator_;
  runtime::GeneratorOptions options = setup_.generator;
  const c10::ScalarType dtype = *options.dtype;
  const int dtype_size = static_cast<int>(c10::elementSize(dtype));
  const std::string identity = runtime::model_identity(
      *setup_.headers, dtype, calibration_tag(options.quantize_nf4, options.compute_fp8, options.attention_fp8));
  // Before the model loads: the budget is enforced and the weights are counted and monitored.
  memory_ = std::make_unique<RenderMemory>(setup_.memory, options.device, dtype, identity, clock_);
  shown_ = memory_.get();
  memory_->attach(options, setup_.on_stage);
  std::vector<runtime::ComponentWeights> weights =
      runtime::model_component_weights(*setup_.headers, dtype_size, options.quantize_nf4, options.compute_fp8);
  if (options.compute_fp8) choose_fp8_weights(*setup_.headers, dtype, memory_->budget().bytes, options, weights);
  options.residency = decide_residency(setup_.memory.offload, options.device, weights, memory_->budget().bytes);
  if (options.residency == runtime::Residency::kStream) {
    // Activations from the calibration cache where it has the group (else the built-in estimates).
    const std::vector<runtime::ResolutionGroup> groups = resolution_groups(items);
    const StreamingPlan plan =
        plan_streaming(runtime::locate_model(setup_.model), weights, dtype_size, groups,
                       runtime::CalibrationCache(runtime::default_calibration_path()),
                       runtime::device_identity(options.device), identity, setup_.max_batch, !setup_.calibrate,
                       memory_->budget().bytes);
    options.resident_blocks = plan.transformer.resident_blocks;
    options.t5_resident_blocks = plan.t5.resident_blocks;
    weights = plan.weights;  // what the stages hold, for the batch plan
    log::info("streaming plan: " + runtime::describe_stream(plan.transformer) + "; the denoise stage holds " +
              runtime::format_bytes(plan.transformer.resident_bytes) + " of transformer weights");
    log::info("streaming plan: " + runtime::describe_stream(plan.t5, "T5") + "; the encode stage holds " +
              runtime::format_bytes(plan.t5.resident_bytes) + " of T5 weights");
  }
  options.decode_budget_bytes = memory_->budget().bytes;
  generator_ = memory_->wrap(std::make_unique<runtime::FluxGenerator>(setup_.model, options), std::move(weights),
                             setup_.calibrate, setup_.max_batch);
  return *generator_;
}

void RenderSession::prepare(const std::vector<const job::RenderItem*>& items) { device(items).prepare(items); }

namespace {
std::vector<const job::RenderItem*> pointers(const std::vector<job::RenderItem>& batch) {
  std::vector<const job::RenderItem*> out;
  for (const job::RenderItem& item : batch) out.push_back(&item);
  return out;
}
}  // namespace

std::vector<runtime::Image> RenderSession::generate(const std::vector<job::RenderItem>& batch) {
  return device(pointers(batch)).generate(batch);
}

void RenderSession::generate_each(const std::vector<job::RenderItem>& batch, const runtime::ImageSink& on_image) {
  device(pointers(batch)).generate_each(batch, on_image);
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
