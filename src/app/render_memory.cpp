#include "render_memory.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory_allocator.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "fluxbatch/runtime/memory_calibration.h"
#include "fluxbatch/runtime/oom.h"
#include "fluxbatch/runtime/pipeline.h"

namespace fluxbatch::app {
namespace {

using runtime::format_bytes;

std::string shape_text(int width, int height, int max_sequence_length) {
  return std::to_string(width) + "x" + std::to_string(height) + ", sequence " + std::to_string(max_sequence_length);
}

}  // namespace

RenderMemory::RenderMemory(const MemoryOptions& options, c10::Device device, c10::ScalarType dtype,
                           std::string model_identity)
    : device_(device), dtype_(dtype), model_identity_(std::move(model_identity)) {
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
  monitor_->set_stage("load");
  monitor_->start();
}

RenderMemory::~RenderMemory() = default;

void RenderMemory::attach(runtime::GeneratorOptions& options) {
  runtime::MemoryMonitor* monitor = monitor_.get();
  options.on_stage = [this, monitor](const std::string& stage) {
    // Leaving idle starts the encode stage or a batch: each gets its own measured peak.
    if (stage_.empty() && !stage.empty()) reset_peak();
    stage_ = stage;
    monitor->set_stage(stage);
  };
  options.memory_note = [this](const std::vector<job::RenderItem>& batch) { return note(batch); };
}

std::unique_ptr<runtime::ImageGenerator> RenderMemory::wrap(std::unique_ptr<runtime::ImageGenerator> generator) {
  if (!cpu_ || !budget_.user_given) return generator;
  return std::make_unique<runtime::BudgetedGenerator>(std::move(generator), cpu_);
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

void RenderMemory::plan(runtime::FluxPipeline& pipeline, const std::vector<runtime::ComponentWeights>& weights,
                        const std::vector<const job::RenderItem*>& items, bool calibrate, int max_batch) {
  monitor_->set_stage("");
  std::string sizes;
  for (const auto& c : weights) sizes += (sizes.empty() ? "" : ", ") + c.name + " " + format_bytes(c.weight_bytes);
  log::info("weights as loaded: " + sizes);
  const int dtype_size = static_cast<int>(c10::elementSize(dtype_));
  fallback_ = runtime::flux_memory_model(weights, dtype_size, pipeline.options().residency);
  const std::vector<runtime::ResolutionGroup> groups = resolution_groups(items);
  if (groups.empty()) return;

  runtime::CalibrationCache cache(runtime::default_calibration_path());
  for (const std::string& w : cache.warnings()) log::warn(w);
  const std::string device = runtime::device_identity(device_);
  const std::string& model = model_identity_;
  std::vector<runtime::MemoryModel> models;
  bool cache_changed = false;
  for (const runtime::ResolutionGroup& g : groups) {
    const std::string shape = shape_text(g.width, g.height, g.max_sequence_length);
    const runtime::CalibrationKey key = calibration_key(device, model, g);
    std::optional<runtime::Calibration> found = cache.find(key);
    if (found) {
      log::info("calibration for " + shape + ": from " + cache.path() + " (measured " + found->measured_at + ")");
    } else if (calibrate) {
      log::info("calibration for " + shape + ": measuring each stage at batch 1 and 2");
      try {
        const runtime::PeakMeter meter{[this] { reset_peak(); }, [this] { return measured_peak(); }};
        found = runtime::calibrate_pipeline(pipeline, fallback_, g.width, g.height, g.max_sequence_length, meter);
        cache.put(key, *found);
        cache_changed = true;
      } catch (const std::exception& e) {
        // Not memory: the model cannot run at all; stop now with the stage named, not a libtorch trace.
        if (!runtime::is_out_of_memory(e)) runtime::throw_stage_error(e, "calibration for " + shape);
        runtime::release_cached_memory();
        log::warn("calibration for " + shape + " ran out of memory at batch 2: batch 1 for this size");
        batches_[{g.width, g.height, g.max_sequence_length}] = 1;
      }
    }
    if (!found) {
      log::info("calibration for " + shape + ": none" + (calibrate ? "" : " cached") +
                "; using the built-in estimates (uncalibrated first guesses)");
    }
    models.push_back(found ? runtime::apply_calibration(fallback_, *found) : fallback_);
  }
  // Staged: the job starts with the encode stage, which must not find the transformer the
  // calibration left behind.
  if (pipeline.options().residency == runtime::Residency::kStaged) pipeline.release_denoisers();
  if (cache_changed) {
    try {
      cache.save();
      log::info("calibration stored in " + cache.path());
    } catch (const OutputError& e) {
      log::warn(std::string("calibration not stored: ") + e.what());
    }
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

std::function<int(const job::RenderItem&)> RenderMemory::batch_for() const {
  const std::map<Shape, int> batches = batches_;
  return [batches](const job::RenderItem& item) {
    const auto it = batches.find({item.params.width, item.params.height, item.params.max_sequence_length});
    return it == batches.end() ? 1 : it->second;
  };
}

int RenderMemory::largest_batch() const {
  int most = 1;
  for (const auto& [shape, batch] : batches_) most = std::max(most, batch);
  return most;
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

void RenderMemory::finish(const runtime::RunSummary& summary, const std::string& output_dir) {
  monitor_->set_stage("");
  monitor_->stop();
  const runtime::MemoryReport report = monitor_->report();
  const std::string text = runtime::format_memory_report(report);
  for (size_t start = 0, end = 0; start < text.size(); start = end + 1) {
    end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) log::info(text.substr(start, end - start));
  }

  io::ManifestSummary s;
  s.total = summary.total;
  s.rendered = summary.rendered;
  s.skipped = summary.skipped;
  s.failed = summary.failed;
  s.blocked = summary.blocked;
  s.not_started = summary.not_started;
  s.oom_retries = summary.oom_retries;
  s.interrupted = summary.interrupted;
  s.seconds = summary.seconds;
  s.device = device_.str();
  s.budget_bytes = budget_.bytes;
  s.allocator = device_.is_cuda() ? runtime::allocator_setup().describe() : "cpu (counting allocator)";
  s.alloc_retries = report.alloc_retries;
  for (const runtime::StageMemory& m : report.stages) {
    s.stages.push_back({m.stage, m.peak_allocated, m.peak_reserved, m.min_device_free, m.warned});
  }
  s.finished_at = io::utc_timestamp();
  std::error_code ec;
  if (!std::filesystem::is_directory(output_dir, ec)) return;  // nothing was rendered there
  try {
    io::ManifestWriter manifest((std::filesystem::path(output_dir) / io::kManifestFileName).string());
    manifest.append_summary(s);
  } catch (const OutputError& e) {
    log::warn(std::string("run summary not recorded: ") + e.what());
  }
}

}  // namespace fluxbatch::app
