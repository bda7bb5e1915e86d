#include "render_progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"

namespace fluxbatch::app {

void add_progress_options(CLI::App& command, ProgressOptions& o) {
  const std::string group = "Progress";
  command
      .add_option("--progress", o.mode,
                  "auto: a live status line on a terminal (images done, batch and step, images/min, ETA, device "
                  "memory), else a progress line every --progress-interval seconds between the per-image lines; "
                  "bar or log to choose one of those; json: one JSON event per line on stdout (start, stage, "
                  "batch, step, image, done) for wrappers; none. -q silences all but json (default auto)")
      ->type_name("MODE")
      ->check(CLI::IsMember({"auto", "bar", "log", "json", "none"}))
      ->group(group);
  command
      .add_option("--progress-interval", o.interval_s,
                  "Seconds between progress lines when the log is not a terminal (default 30)")
      ->type_name("S")
      ->check(CLI::Range(0.1, 86400.0))
      ->group(group);
}

bool stderr_is_terminal() {
  const char* term = std::getenv("TERM");
  return ::isatty(STDERR_FILENO) == 1 && !(term != nullptr && std::strcmp(term, "dumb") == 0);
}

bool use_color() {
  const char* no_color = std::getenv("NO_COLOR");
  return stderr_is_terminal() && (no_color == nullptr || *no_color == '\0');
}

std::unique_ptr<runtime::Progress> make_progress(const ProgressOptions& o, std::function<int64_t()> device_bytes,
                                                 std::function<std::string()> detail) {
  std::string mode = o.mode;
  if (mode == "auto") mode = stderr_is_terminal() ? "bar" : "log";
  const bool quiet = log::level() >= log::Level::kWarn;
  if (mode == "none" || (quiet && mode != "json")) return nullptr;
  runtime::ProgressOptions p;
  p.interval_s = o.interval_s;
  p.device_bytes = std::move(device_bytes);
  p.detail = std::move(detail);
  if (mode == "bar") {
    p.style = runtime::ProgressStyle::kLive;
    p.live = [](const std::string& text) { log::set_status(text); };
  } else if (mode == "log") {
    p.style = runtime::ProgressStyle::kLines;
    p.line = [](const std::string& text) { log::info(text); };
  } else if (mode == "json") {
    p.style = runtime::ProgressStyle::kJson;
    p.json = [](const std::string& event) {
      std::fputs(event.c_str(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    };
  } else {
    throw InputError("--progress: expected auto, bar, log, json or none, got '" + o.mode + "'");
  }
  return std::make_unique<runtime::Progress>(p);
}

}  // namespace fluxbatch::app
