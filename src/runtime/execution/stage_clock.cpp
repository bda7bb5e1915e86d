#include "fluxbatch/runtime/execution/stage_clock.h"

#include <algorithm>
#include <chrono>

namespace fluxbatch::runtime {
namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

StageClock::StageClock(std::function<double()> now) : now_(now ? std::move(now) : steady_seconds) {
  start_ = entered_ = now_();
}

void StageClock::close_locked(double now) {
  const double spent = std::max(0.0, now - entered_);
  entered_ = now;
  if (current_.empty()) {
    idle_ += spent;
    return;
  }
  const auto it = std::find_if(totals_.begin(), totals_.end(), [&](const StageTime& t) { return t.stage == current_; });
  if (it == totals_.end()) {
    totals_.push_back({current_, spent});
  } else {
    it->seconds += spent;
  }
}

void StageClock::enter(const std::string& stage) {
  const double now = now_();
  std::lock_guard<std::mutex> lock(mutex_);
  close_locked(now);
  current_ = stage;
  if (!stage.empty() && std::none_of(totals_.begin(), totals_.end(), [&](const StageTime& t) { return t.stage == stage; })) {
    totals_.push_back({stage, 0.0});
  }
}

std::string StageClock::current() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return current_;
}

double StageClock::since_start() const {
  const double now = now_();
  std::lock_guard<std::mutex> lock(mutex_);
  return now - start_;
}

std::vector<StageTime> StageClock::totals() const {
  const double now = now_();
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<StageTime> out = totals_;
  double idle = idle_;
  const double open = std::max(0.0, now - entered_);
  if (current_.empty()) {
    idle += open;
  } else {
    for (StageTime& t : out) {
      if (t.stage == current_) t.seconds += open;
    }
  }
  if (idle > 0.0) out.push_back({"other", idle});
  return out;
}

double StageClock::seconds(const std::string& stage) const {
  for (const StageTime& t : totals()) {
    if (t.stage == stage) return t.seconds;
  }
  return 0.0;
}

}  // namespace fluxbatch::runtime
