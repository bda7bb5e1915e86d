// Stop requests from a person or a scheduler. SIGINT (Ctrl-C) and SIGTERM (Slurm's scancel, a time
// limit or preemption, a Kubernetes pod's stop) both ask the runner to stop after the images in hand
// (within --grace); a second Ctrl-C kills the process the usual way, further SIGTERMs change nothing
// (a scheduler may signal every process of a step, and a --devices parent forwards them too).
#pragma once
#include <atomic>

namespace fluxbatch::app {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers
  ~InterruptGuard();  // restores the previous ones
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
  const std::atomic<bool>& stop_flag() const;
};

// The signal that asked for the stop (SIGINT or SIGTERM), 0 when none came.
int stop_signal();

}  // namespace fluxbatch::app
