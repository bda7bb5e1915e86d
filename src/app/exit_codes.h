// The documented exit codes of the fluxbatch command (README "Exit codes"). Only main() turns
// outcomes into these.
#pragma once
#include <csignal>

#include "fluxbatch/runtime/execution/job_runner.h"
#include "interrupt.h"

namespace fluxbatch::app {

inline constexpr int kExitOk = 0;            // every item rendered (or already finished)
inline constexpr int kExitSomeFailed = 1;    // some items failed, the others were rendered
inline constexpr int kExitInvalidInput = 2;  // bad command line or job file; nothing was written
inline constexpr int kExitModelOrDevice = 3; // model, device or output error
inline constexpr int kExitInterrupted = 130; // Ctrl-C: the images in hand were finished, then it stopped
inline constexpr int kExitTerminated = 143;  // SIGTERM (scancel, preemption, pod stop): as 130; requeue resumes

// The code of a run a signal stopped early.
inline int exit_code_for_stop() { return stop_signal() == SIGTERM ? kExitTerminated : kExitInterrupted; }

// Exit code of a completed run.
inline int exit_code_for(const runtime::RunSummary& summary) {
  if (summary.interrupted) return exit_code_for_stop();
  return summary.failed + summary.blocked > 0 ? kExitSomeFailed : kExitOk;
}

inline constexpr const char* kExitCodesHelp =
    "Exit codes:\n"
    "  0    every item was rendered (or had been rendered by an earlier run)\n"
    "  1    some items failed; the others were rendered (see manifest.jsonl)\n"
    "  2    invalid input: command line or job file; nothing was written\n"
    "  3    model, device or output error (missing weights, no CUDA, disk full, ...)\n"
    "  130  interrupted (Ctrl-C): finished images are kept, a rerun resumes\n"
    "  143  terminated (SIGTERM: scancel, time limit, preemption, a pod's stop): as 130; a requeued task\n"
    "       resumes where this one stopped\n";

}  // namespace fluxbatch::app
