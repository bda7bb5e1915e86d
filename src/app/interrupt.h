// Ctrl-C handling: the first SIGINT asks the runner to stop after the images in hand; a second
// one kills the process the usual way.
#pragma once
#include <atomic>

namespace fluxbatch::app {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handler
  ~InterruptGuard();  // restores the previous one
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
  const std::atomic<bool>& stop_flag() const;
};

}  // namespace fluxbatch::app
