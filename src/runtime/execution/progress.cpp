#include "fluxbatch/runtime/execution/progress.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "fluxbatch/io/json_line.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::runtime {
namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr double kMinRedraw = 0.1;  // seconds between event-driven redraws of the live line

const char* stage_doing(const std::string& stage) {
  if (stage == "load") return "loading weights";
  if (stage == "calibrate") return "measuring memory";
  if (stage == "encode") return "encoding prompts";
  if (stage == "denoise") return "denoising";
  if (stage == "decode") return "decoding";
  return "";
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0.0) return "?";
  const auto total = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (total >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(total / 3600),
                  static_cast<long long>(total / 60 % 60), static_cast<long long>(total % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(total / 60), static_cast<long long>(total % 60));
  }
  return buf;
}

Progress::Progress(ProgressOptions options) : options_(std::move(options)) {
  if (!options_.clock) options_.clock = steady_seconds;
  options_.interval_s = std::max(0.1, options_.interval_s);
  start_ = now();
  const bool periodic = options_.style == ProgressStyle::kLive || options_.style == ProgressStyle::kLines;
  if (periodic && options_.background) thread_ = std::thread([this] { run(); });
}

Progress::~Progress() { stop(); }

void Progress::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (options_.style == ProgressStyle::kLive && options_.live && !finished_) options_.live("");
    finished_ = true;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

double Progress::now() const { return options_.clock(); }

void Progress::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  const double period = options_.style == ProgressStyle::kLive ? std::min(1.0, options_.interval_s) : options_.interval_s;
  const auto wait = std::chrono::duration<double>(period);
  while (!wake_.wait_for(lock, wait, [this] { return stopping_; })) {
    lock.unlock();
    tick();
    lock.lock();
  }
}

void Progress::tick() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (finished_) return;
  if (options_.style == ProgressStyle::kLive) draw_locked(true);
  if (options_.style == ProgressStyle::kLines && options_.line && to_render_ > 0) {
    options_.line("progress: " + status_locked(now()));
  }
}

void Progress::emit_json(const std::string& line) {
  if (options_.style == ProgressStyle::kJson && options_.json && !finished_) options_.json(line);
}

std::string Progress::status_text() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_locked(now());
}

std::string Progress::status_locked(double t) const {
  char buf[96];
  std::string out;
  const int64_t finished = done_ + elsewhere_;
  std::snprintf(buf, sizeof buf, "%lld/%lld images", static_cast<long long>(finished),
                static_cast<long long>(to_render_));
  out += buf;
  if (to_render_ > 0) {
    std::snprintf(buf, sizeof buf, " (%d%%)", static_cast<int>(100 * finished / to_render_));
    out += buf;
  }
  if (elsewhere_ > 0) out += ", " + std::to_string(elsewhere_) + " by other workers";
  if (failed_ > 0) out += ", " + std::to_string(failed_) + " failed";
  if (cached_ > 0) out += ", " + std::to_string(cached_) + " from cache";
  if (in_batch_) {
    std::snprintf(buf, sizeof buf, " | batch %lld/%lld (%zu image%s)", static_cast<long long>(batch_),
                  static_cast<long long>(batches_), batch_images_, batch_images_ == 1 ? "" : "s");
    out += buf;
    if (steps_ > 0 && stage_ != "decode") {
      std::snprintf(buf, sizeof buf, " step %d/%d", step_, steps_);
      out += buf;
    } else if (stage_ == "decode") {
      out += " decoding";
    }
  } else if (const char* doing = stage_doing(stage_); *doing != '\0') {
    out += std::string(" | ") + doing;
  }
  if (options_.detail) {
    const std::string detail = options_.detail();
    if (!detail.empty()) out += " | " + detail;
  }
  // Rate: rendered images (not those served from the cache) since the first batch began; with other
  // workers, theirs too (the ETA is the job's).
  const int64_t rendered = finished - cached_;
  // (No batch of its own, as for a --devices parent: since the start.)
  const double rendering = t - (render_start_ >= 0.0 ? render_start_ : start_);
  double per_image = -1.0;
  if (rendered > 0 && rendering > 0.0) {
    per_image = rendering / static_cast<double>(rendered);
    std::snprintf(buf, sizeof buf, " | %.1f img/min", 60.0 / per_image);
    out += buf;
  } else if (in_batch_ && steps_ > 0 && step_ > 0 && batch_images_ > 0) {
    // No image yet: the current batch's pace so far.
    per_image = (t - batch_start_) * steps_ / step_ / static_cast<double>(batch_images_);
  }
  const int64_t left = to_render_ - finished;
  if (left > 0 && per_image > 0.0) out += " | ETA " + format_duration(per_image * static_cast<double>(left));
  if (options_.device_bytes) {
    const int64_t bytes = options_.device_bytes();
    if (bytes >= 0) out += " | mem " + format_bytes(bytes);
  }
  out += " | " + format_duration(t - start_) + " elapsed";
  return out;
}

void Progress::draw_locked(bool force) {
  if (options_.style != ProgressStyle::kLive || !options_.live || finished_) return;
  const double t = now();
  if (!force && last_draw_ >= 0.0 && t - last_draw_ < kMinRedraw) return;
  last_draw_ = t;
  options_.live(status_locked(t));
}

void Progress::job_started(const JobStartEvent& e) {
  std::lock_guard<std::mutex> lock(mutex_);
  to_render_ = e.to_render;
  skipped_ = e.skipped;
  emit_json(io::JsonLine()
                .add("event", "start")
                .add("time", now() - start_)
                .add("total", e.total)
                .add("to_render", e.to_render)
                .add("skipped", e.skipped)
                .add("blocked", e.blocked)
                .str());
  draw_locked(true);
}

void Progress::stage(const std::string& stage) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stage == stage_) return;
  stage_ = stage;
  if (!stage.empty()) emit_json(io::JsonLine().add("event", "stage").add("time", now() - start_).add("stage", stage).str());
  draw_locked(false);
}

void Progress::batch_started(const BatchEvent& e) {
  std::lock_guard<std::mutex> lock(mutex_);
  const double t = now();
  if (render_start_ < 0.0) render_start_ = t;
  batch_ = e.number;
  batches_ = e.batches;
  batch_images_ = e.images;
  batch_start_ = t;
  step_ = 0;
  steps_ = e.steps;
  in_batch_ = true;
  emit_json(io::JsonLine()
                .add("event", "batch")
                .add("state", "started")
                .add("time", t - start_)
                .add("batch", e.number)
                .add("batches", e.batches)
                .add("images", static_cast<int64_t>(e.images))
                .add("width", e.width)
                .add("height", e.height)
                .add("steps", e.steps)
                .str());
  draw_locked(true);
}

void Progress::batch_finished(const BatchEvent& e) {
  std::lock_guard<std::mutex> lock(mutex_);
  in_batch_ = false;
  emit_json(io::JsonLine()
                .add("event", "batch")
                .add("state", "finished")
                .add("time", now() - start_)
                .add("batch", e.number)
                .add("batches", e.batches)
                .add("images", static_cast<int64_t>(e.images))
                .add("seconds", e.seconds)
                .str());
  draw_locked(false);
}

void Progress::step(int step, int steps) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_ = step;
  steps_ = steps;
  emit_json(io::JsonLine()
                .add("event", "step")
                .add("time", now() - start_)
                .add("batch", batch_)
                .add("step", step)
                .add("steps", steps)
                .str());
  draw_locked(false);
}

void Progress::image_finished(const ImageEvent& e) {
  std::lock_guard<std::mutex> lock(mutex_);
  done_ = e.done;
  if (!e.ok) ++failed_;
  if (e.cached) ++cached_;
  io::JsonLine event;
  event.add("event", "image")
      .add("time", now() - start_)
      .add("status", e.ok ? "ok" : "failed")
      .add("file", e.item != nullptr ? e.item->file : std::string())
      .add("path", e.path);
  if (e.item != nullptr) {
    event.add("index", e.item->index).add("prompt", e.item->prompt).add("seed", e.item->params.seed);
  }
  event.add("cached", e.cached).add("generate_s", e.generate_s).add("write_s", e.write_s);
  if (!e.ok) event.add("error", e.error);
  event.add("done", e.done).add("to_render", e.to_render);
  emit_json(event.str());
  draw_locked(false);
}

void Progress::done_elsewhere(int64_t images) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (images == elsewhere_) return;
  elsewhere_ = images;
  emit_json(io::JsonLine().add("event", "shared").add("time", now() - start_).add("done_elsewhere", images).str());
  draw_locked(false);
}

void Progress::finish(const ProgressDone& d) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (finished_) return;
  io::JsonLine stages;
  for (const StageTime& s : d.stages) stages.add(s.stage, s.seconds);
  emit_json(io::JsonLine()
                .add("event", "done")
                .add("time", now() - start_)
                .add("rendered", d.rendered)
                .add("cached", d.cached)
                .add("skipped", d.skipped)
                .add("failed", d.failed)
                .add("blocked", d.blocked)
                .add("not_started", d.not_started)
                .add("interrupted", d.interrupted)
                .add("wall_s", d.wall_s)
                .add("images_per_hour", d.images_per_hour)
                .add_raw("stage_seconds", stages.str())
                .add("exit_code", d.exit_code)
                .str());
  if (options_.style == ProgressStyle::kLive && options_.live) options_.live("");
  finished_ = true;
}

}  // namespace fluxbatch::runtime
