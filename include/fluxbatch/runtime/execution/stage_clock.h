// Wall time per pipeline stage over a run ("load", "calibrate", "encode", "denoise", "decode"): the
// stage marks the generator already sends for memory accounting also start and stop this clock, so
// the end-of-job summary can say where the time went. Time outside any stage ("") is "other".
// Thread-safe. Torch-free.
#pragma once
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace fluxbatch::runtime {

struct StageTime {
  std::string stage;
  double seconds = 0.0;
};

class StageClock {
 public:
  // `now`: monotonic seconds (tests pass a fake); default std::chrono::steady_clock. Starts idle.
  explicit StageClock(std::function<double()> now = {});

  void enter(const std::string& stage);  // ends the current stage; "" = no stage
  std::string current() const;
  double since_start() const;  // seconds since construction

  // Every stage entered so far, in first-seen order, the current one counted up to now, then
  // "other" (the idle time) when there was any.
  std::vector<StageTime> totals() const;
  double seconds(const std::string& stage) const;  // 0 for a stage never entered

 private:
  void close_locked(double now);
  std::function<double()> now_;
  mutable std::mutex mutex_;
  double start_ = 0.0;
  double entered_ = 0.0;  // when the current stage (or idle spell) began
  std::string current_;
  std::vector<StageTime> totals_;
  double idle_ = 0.0;
};

}  // namespace fluxbatch::runtime
