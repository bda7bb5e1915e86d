// render's progress display: --progress auto|bar|log|json|none and --progress-interval, resolved
// against the terminal (a live line on stderr when it is one, periodic log lines when it is not),
// -q, and NO_COLOR / TERM=dumb.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "fluxbatch/runtime/execution/progress.h"

namespace fluxbatch::app {

struct ProgressOptions {
  std::string mode = "auto";  // --progress
  double interval_s = 30.0;   // --progress-interval
};
void add_progress_options(CLI::App& command, ProgressOptions& options);

// stderr is a terminal that can redraw a line (isatty, TERM not "dumb").
bool stderr_is_terminal();
// Colour for the log on a terminal unless NO_COLOR is set to anything non-empty (no-color.org).
bool use_color();

// The display the options ask for: auto = bar on a terminal, log otherwise; none under -q (quiet
// log level) unless json was asked for explicitly. json events go to stdout, one per line, flushed.
// `device_bytes`: memory in use now (shown on the bar and the log lines). Null for none. `detail`: more
// text for the line (a --devices parent's workers). Null for none.
std::unique_ptr<runtime::Progress> make_progress(const ProgressOptions& options,
                                                 std::function<int64_t()> device_bytes,
                                                 std::function<std::string()> detail = nullptr);

}  // namespace fluxbatch::app
