#include "render_memory.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "fluxbatch/runtime/memory/decode_plan.h"
#include "fluxbatch/runtime/memory/memory_allocator.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "fluxbatch/runtime/memory/oom.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::app {
namespace {

using runtime::format_bytes;

std::string shape_text(int width, int height, int max_sequence_length) {
  return std::to_string(width) + "x" + std::to_string(height) + ", sequence " + std::to_string(max_sequence_length);
}

}  // namespace

// The generator the runner drives: the FluxGenerator, whose prepare() runs inside the memory plan
// (RenderMemory::plan), so that calibration uses the components the job's stages load anyway.
class RenderMemory::PlanningGenerator : public runtime::ImageGenerator {
 public:
  PlanningGenerator(RenderMemory& memory, std::unique_ptr<runtime::FluxGenerator> inner,
                    std::vector<runtime::ComponentWeights> weights, bool calibrate, int max_batch)
      : memory_(memory),
        inner_(std::move(inner)),
        weights_(std::move(weights)),
        calibrate_(calibrate),
        max_batch_(max_batch) {}

  void prepare(const std::vector<const job::RenderItem*>& items) override {
    memory_.plan(inner_->pipeline(), weights_, items, calibrate_, max_batch_, [&] { inner_->prepare(items); });
  }
  std::vector<runtime::Image> generate(const std::vector<job::RenderItem>& batch) override {
    return inner_->generate(batch);
  }
  void generate_each(const std::vector<job::RenderItem>& batch, const runtime::ImageSink& on_image) override {
    inner_->generate_each(batch, on_image);
  }
  std::string model_description() const override { return inner_->model_description(); }

 private:
  RenderMemory& memory_;
  std::unique_ptr<runtime::FluxGenerator> inner_;
  std::vector<runtime::ComponentWeights> weights_;
  bool calibrate_;
  int max_batch_;
};

RenderMemory::RenderMemory(const MemoryOptions& options, c10::Device device, c10::ScalarType dtype,
                           std::string model_identity, runtime::StageClock& clock)
    : device_(device),
      dtype_(dtype),
      model_identity_(std::move(model_identity)),
      vae_tiles_(runtime::parse_vae_tiles(options.vae_tiles)),
      clock_(clock) {
  budget_ = resolve_budget(device, options);
  runtime::MemorySampler sampler;
  if (device.is_cuda()) {
    log::info("allocator: " + runtime::allocator_setup().describe());
    runtime::cap_cuda_memory(device.has_index() ? device.index() : 0, budget_.bytes);
    log::info("memory budget " + budget_.how + ", enforced through the CUDA allocator");
    sampler = runtime::cuda_memory_sampler(device.has_index() ? device.index() : 0);
  } else {
    // Counting from before the load, so weights count too; enforcing only what the user asked for.
    cpu_ = std::make_shared<runtime::CpuMemoryBudget>(budget_.user_given ? budget_.bytes
                                                                         : std::numeric_limits<int64_t>::max());
    log::info("memory budget " + budget_.how +
              (budget_.user_given ? ", enforced by counting CPU tensors" : ", for planning (not enforced)"));
    sampler = runtime::cpu_memory_sampler(*cpu_);
  }
  runtime::MonitorOptions monitor;
  monitor.interval_ms = options.monitor_interval_ms;
  monitor.threshold = options.monitor_threshold;
  monitor.budget_bytes = budget_.bytes;
  monitor_ = std::make_unique<runtime::MemoryMonitor>(sampler, monitor);
  set_stage("load");
  monitor_->start();
}

RenderMemory::~RenderMemory() = default;

void RenderMemory::set_stage(const std::string& stage) {
  // Leaving idle starts the encode stage or a batch: each gets its own measured peak.
  if (stage_.empty() && !stage.empty()) reset_peak();
  stage_ = stage;
  monitor_->set_stage(stage);
  clock_.enter(stage);
  if (on_stage_) on_stage_(stage);
}

void RenderMemory::attach(runtime::GeneratorOptions& options, std::function<void(const std::string&)> on_stage) {
  on_stage_ = std::move(on_stage);
  options.on_stage = [this](const std::string& stage) { set_stage(stage); };
  options.memory_note = [this](const std::vector<job::RenderItem>& batch) { return note(batch); };
  // The generator's decode plan weighs a whole decode as the batch plan did: measured where calibrated.
  options.calibrated_decode_bytes = [this](int width, int height) {
    for (const auto& [shape, model] : models_) {
      if (std::get<0>(shape) == width && std::get<1>(shape) == height) {
        return runtime::calibrated_decode_bytes(model, width, height);
      }
    }
    return int64_t{0};
  };
}

std::unique_ptr<runtime::ImageGenerator> RenderMemory::wrap(std::unique_ptr<runtime::FluxGenerator> generator,
                                                            std::vector<runtime::ComponentWeights> weights,
                                                            bool calibrate, int max_batch) {
  std::unique_ptr<runtime::ImageGenerator> out =
      std::make_unique<PlanningGenerator>(*this, std::move(generator), std::move(weights), calibrate, max_batch);
  if (!cpu_ || !budget_.user_given) return out;
  return std::make_unique<runtime::BudgetedGenerator>(std::move(out), cpu_);
}

int64_t RenderMemory::measured_peak() const {
  return cpu_ ? cpu_->peak_bytes() : runtime::peak_allocated_bytes(device_);
}

void RenderMemory::reset_peak() const {
  if (cpu_) {
    cpu_->reset_peak();
  } else {
    runtime::reset_peak_memory(device_);
  }
}

int64_t RenderMemory::in_use_bytes() const {
  const runtime::MemorySample s = monitor_->latest();
  return std::max(s.allocated, s.reserved);
}

void RenderMemory::plan(runtime::FluxPipeline& pipeline, const std::vector<runtime::ComponentWeights>& weights,
                        const std::vector<const job::RenderItem*>& items, bool calibrate, int max_batch,
                        const std::function<void()>& encode_stage) {
  set_stage("");
  std::string sizes;
  for (const auto& c : weights) sizes += (sizes.empty() ? "" : ", ") + c.name + " " + format_bytes(c.weight_bytes);
  log::info("weights as loaded: " + sizes);
  const int dtype_size = static_cast<int>(c10::elementSize(dtype_));
  fallback_ = runtime::flux_memory_model(weights, dtype_size, pipeline.options().residency);
  const std::vector<runtime::ResolutionGroup> groups = resolution_groups(items);

  runtime::CalibrationCache cache(runtime::default_calibration_path());
  for (const std::string& w : cache.warnings()) log::warn(w);
  const std::string device = runtime::device_identity(device_);
  const std::string& model = model_identity_;
  // The groups to measure, and what the encode stage measured per sequence length.
  std::vector<const runtime::ResolutionGroup*> measure;
  for (const runtime::ResolutionGroup& g : groups) {
    const std::string shape = shape_text(g.width, g.height, g.max_sequence_length);
    if (const auto found = cache.find(calibration_key(device, model, g))) {
      log::info("calibration for " + shape + ": from " + cache.path() + " (measured " + found->measured_at + ")");
    } else if (calibrate) {
      measure.push_back(&g);
    } else {
      log::info("calibration for " + shape + ": none cached; using the built-in estimates (uncalibrated first guesses)");
    }
  }
  const runtime::PeakMeter meter{[this] { reset_peak(); }, [this] { return measured_peak(); }};
  const auto out_of_memory = [&](const runtime::ResolutionGroup& g, const std::exception& e) {
    // Not memory: the model cannot run at all; stop now with the stage named, not a libtorch trace.
    if (!runtime::is_out_of_memory(e)) {
      runtime::throw_stage_error(e, "calibration for " + shape_text(g.width, g.height, g.max_sequence_length));
    }
    runtime::release_cached_memory();
    log::warn("calibration for " + shape_text(g.width, g.height, g.max_sequence_length) +
              " ran out of memory at batch 2: batch 1 for this size");
    batches_[{g.width, g.height, g.max_sequence_length}] = 1;
  };
  std::map<int, runtime::EncodePeaks> encode_peaks;  // by max_sequence_length
  if (!measure.empty()) {
    // With the text encoders the job's encode stage is about to use.
    try {
      set_stage("load");
      pipeline.load_text_encoders();
      set_stage("calibrate");
      for (const runtime::ResolutionGroup* g : measure) {
        log::info("calibration for " + shape_text(g->width, g->height, g->max_sequence_length) +
                  ": measuring each stage at batch 1 and 2");
        if (encode_peaks.count(g->max_sequence_length)) continue;
        try {
          encode_peaks[g->max_sequence_length] = runtime::measure_encode(pipeline, g->max_sequence_length, meter);
        } catch (const std::exception& e) {
          out_of_memory(*g, e);
        }
      }
    } catch (const std::exception& e) {
      if (!runtime::is_out_of_memory(e)) {
        // A stage error from the measurements above (it names the shape), or a model that cannot load.
        if (dynamic_cast<const Error*>(&e) != nullptr) throw;
        runtime::throw_stage_error(e, "calibration, loading the text encoders");
      }
      runtime::release_cached_memory();  // the text encoders do not fit: the encode stage falls back to the CPU
      log::warn("calibration: the text encoders do not fit on the device (" + runtime::exception_message(e) +
                "); sizes not calibrated render at batch 1");
    }
    set_stage("");
  }
  if (encode_stage) encode_stage();  // the job's encode stage: every prompt, then the text encoders go
  std::map<Shape, runtime::Calibration> measured;
  for (const runtime::ResolutionGroup* g : measure) {
    const auto encode = encode_peaks.find(g->max_sequence_length);
    if (encode == encode_peaks.end()) {
      batches_[{g->width, g->height, g->max_sequence_length}] = 1;  // its encode measurement ran out of memory
      continue;
    }
    if (!pipeline.denoisers_loaded()) {
      set_stage("load");  // the first batch goes on with these
      pipeline.load_denoisers();
    }
    set_stage("calibrate");
    try {
      const runtime::DenoisePeaks denoise =
          runtime::measure_denoise_decode(pipeline, g->width, g->height, g->max_sequence_length, meter);
      const runtime::Calibration c =
          runtime::fit_calibration(fallback_, g->width, g->height, g->max_sequence_length, encode->second, denoise);
      cache.put(calibration_key(device, model, *g), c);
      measured[{g->width, g->height, g->max_sequence_length}] = c;
    } catch (const std::exception& e) {
      out_of_memory(*g, e);
    }
  }
  set_stage("");
  if (!measured.empty()) {
    try {
      cache.save();
      log::info("calibration stored in " + cache.path());
    } catch (const OutputError& e) {
      log::warn(std::string("calibration not stored: ") + e.what());
    }
  }
  if (groups.empty()) return;
  std::vector<runtime::MemoryModel> models;
  for (const runtime::ResolutionGroup& g : groups) {
    const auto found = cache.find(calibration_key(device, model, g));
    models.push_back(found ? runtime::apply_calibration(fallback_, *found) : fallback_);
    // Tiled where the generator will tile (the same plan_decode), so the batch plan counts that decode.
    runtime::apply_decode_plan(
        models.back(), runtime::plan_decode(runtime::vae_config(pipeline.files()), g.width, g.height, dtype_size,
                                            device_.is_cuda(), runtime::decode_stage_weight_bytes(models.back()),
                                            budget_.bytes, vae_tiles_,
                                            runtime::calibrated_decode_bytes(models.back(), g.width, g.height)));
  }
  const runtime::Plan plan = runtime::plan_batches(models, groups, budget_.bytes, std::max(1, max_batch));
  for (size_t i = 0; i < groups.size(); ++i) {
    const runtime::GroupPlan& gp = plan.groups[i];
    const Shape shape{groups[i].width, groups[i].height, groups[i].max_sequence_length};
    models_[shape] = models[i];
    const auto forced = batches_.find(shape);
    const int batch = forced != batches_.end() ? forced->second : gp.batch_size;
    batches_[shape] = batch;
    if (!calibrate) continue;
    log::info("plan for " + shape_text(groups[i].width, groups[i].height, groups[i].max_sequence_length) +
              ": batch " + std::to_string(batch) + ", predicted peak " +
              format_bytes(runtime::plan_group(models[i], groups[i], batch).peak_bytes) + " (" + gp.limiting_stage +
              ") of " + format_bytes(budget_.bytes) + (gp.calibrated ? ", calibrated" : ", uncalibrated") +
              (gp.fits ? "" : "; does not fit even at batch 1"));
  }
}

int RenderMemory::batch_of(const job::RenderItem& item) const {
  const auto it = batches_.find({item.params.width, item.params.height, item.params.max_sequence_length});
  return it == batches_.end() ? 1 : it->second;
}

std::string RenderMemory::note(const std::vector<job::RenderItem>& batch) {
  if (batch.empty()) return "";
  const job::RenderParams& p = batch.front().params;
  const auto it = models_.find({p.width, p.height, p.max_sequence_length});
  const runtime::MemoryModel& model = it != models_.end() ? it->second : fallback_;
  std::string out = "memory: measured peak " + format_bytes(measured_peak());
  if (model.stages.empty()) return out;
  const runtime::ResolutionGroup group{p.width, p.height, p.max_sequence_length, static_cast<int64_t>(batch.size())};
  const runtime::GroupPlan predicted = runtime::plan_group(model, group, static_cast<int>(batch.size()));
  return out + ", predicted " + format_bytes(predicted.peak_bytes) +
         (model.calibrated ? " (calibrated)" : " (uncalibrated)");
}

RenderMemory::Facts RenderMemory::stop() {
  set_stage("");
  monitor_->stop();
  Facts f;
  f.device = device_.str();
  f.budget_bytes = budget_.bytes;
  f.allocator = device_.is_cuda() ? runtime::allocator_setup().describe() : "cpu (counting allocator)";
  f.memory = monitor_->report();
  return f;
}

}  // namespace fluxbatch::app
