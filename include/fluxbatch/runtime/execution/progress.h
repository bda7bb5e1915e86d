// What a person (or a wrapper) sees while a job runs, fed by the runner's JobObserver events, the
// generator's steps and the stage marks:
//   kLive   one status line redrawn in place (a terminal): images done / to render, the batch and
//           its step, images per minute, ETA for the job, device memory in use, elapsed time;
//   kLines  the same as a log line every interval (cron, CI: the per-image lines come from the runner);
//   kJson   one JSON object per event: start, stage, batch (started / finished), step, image, done.
// Where the text goes is injected, so the display logic is tested without a terminal. Torch-free.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fluxbatch/runtime/execution/job_observer.h"
#include "fluxbatch/runtime/execution/stage_clock.h"

namespace fluxbatch::runtime {

enum class ProgressStyle { kNone, kLive, kLines, kJson };

struct ProgressOptions {
  ProgressStyle style = ProgressStyle::kNone;
  // kLines: seconds between progress lines; kLive: between redraws when nothing happens (events
  // redraw at once, at most ten times a second).
  double interval_s = 30.0;
  std::function<int64_t()> device_bytes;                 // memory in use now; null or < 0: not shown
  std::function<std::string()> detail;                   // more text for the line (e.g. the workers); "" none
  std::function<void(const std::string&)> live;          // kLive: draw the status line ("" removes it)
  std::function<void(const std::string&)> line;          // kLines: one progress line for the log
  std::function<void(const std::string&)> json;          // kJson: one event, a JSON object without newline
  std::function<double()> clock;                         // monotonic seconds; default steady_clock
  bool background = true;  // a thread for the periodic redraw / line (tests drive tick() themselves)
};

// The end of the job, for the "done" event.
struct ProgressDone {
  int64_t rendered = 0, cached = 0, skipped = 0, failed = 0, blocked = 0, not_started = 0;
  bool interrupted = false;
  double wall_s = 0.0;
  double images_per_hour = 0.0;
  std::vector<StageTime> stages;
  int exit_code = 0;
};

class Progress : public JobObserver {
 public:
  explicit Progress(ProgressOptions options);
  ~Progress() override;  // stops the thread and removes the live line
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void job_started(const JobStartEvent& event) override;
  void batch_started(const BatchEvent& event) override;
  void batch_finished(const BatchEvent& event) override;
  void image_finished(const ImageEvent& event) override;
  void done_elsewhere(int64_t images) override;
  void step(int step, int steps);             // the current batch finished denoising step `step` (1-based)
  void stage(const std::string& stage);       // "load", "encode", ... ("" between stages)
  void finish(const ProgressDone& done);      // the "done" event; the live line goes; no output after it
  // No output from now on and the thread joined (device_bytes is not called after this returns):
  // for an error path, which has no "done".
  void stop();

  void tick();                      // what the thread does every interval (public for tests)
  std::string status_text() const;  // the live line / the progress line's text, now

 private:
  double now() const;
  void draw_locked(bool force);
  std::string status_locked(double now) const;
  void emit_json(const std::string& line);
  void run();

  ProgressOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::thread thread_;
  bool stopping_ = false;
  bool finished_ = false;

  double start_ = 0.0;
  double render_start_ = -1.0;  // first batch started; -1: not yet
  double last_draw_ = -1.0;
  int64_t to_render_ = 0, skipped_ = 0, done_ = 0, failed_ = 0, cached_ = 0;
  int64_t elsewhere_ = 0;  // of to_render_: finished by other workers sharing the output directory
  int64_t batch_ = 0, batches_ = 0;
  size_t batch_images_ = 0;
  double batch_start_ = 0.0;
  int step_ = 0, steps_ = 0;
  bool in_batch_ = false;
  std::string stage_;
};

// "1:02:03" / "2:03" for a duration in seconds; "?" when negative or not finite.
std::string format_duration(double seconds);

}  // namespace fluxbatch::runtime
