// Logging sink: stderr, serialised by a mutex so lines from the memory monitor, the output writer and
// the progress line never interleave.
#include "fluxbatch/core/log.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace fluxbatch::log {
namespace {

std::atomic<Level> g_level{Level::kInfo};
std::atomic<bool> g_color{false};
std::mutex g_mutex;
std::string g_status;  // the live line on screen now ("" = none); guarded by g_mutex
const auto g_start = std::chrono::steady_clock::now();

// "\r" + erase to the end of the line: the cursor stays on the status line's row.
constexpr const char* kEraseLine = "\r\033[K";

const char* tag_color(Level lvl) {
  switch (lvl) {
    case Level::kDebug: return "\033[2m";
    case Level::kWarn: return "\033[33m";
    case Level::kError: return "\033[31m";
    default: return "";
  }
}

// Cuts `text` to `columns` display columns, counting UTF-8 lead bytes only.
std::string fit(const std::string& text, int columns) {
  int seen = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;
    if (++seen > columns) return text.substr(0, i);
  }
  return text;
}

void emit(Level lvl, const char* tag, const std::string& message) {
  if (lvl < g_level.load()) return;
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_status.empty()) std::fputs(kEraseLine, stderr);
  const bool colored = g_color.load() && *tag_color(lvl) != '\0';
  std::fprintf(stderr, "[%8.3f] %s%s%s %s\n", t, colored ? tag_color(lvl) : "", tag, colored ? "\033[0m" : "",
               message.c_str());
  if (!g_status.empty()) std::fputs(g_status.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace

void set_level(Level level) { g_level.store(level); }
Level level() { return g_level.load(); }

void debug(const std::string& m) { emit(Level::kDebug, "debug", m); }
void info(const std::string& m) { emit(Level::kInfo, "info ", m); }
void warn(const std::string& m) { emit(Level::kWarn, "warn ", m); }
void error(const std::string& m) { emit(Level::kError, "error", m); }

void passthrough(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_status.empty()) std::fputs(kEraseLine, stderr);
  std::fputs(line.c_str(), stderr);
  std::fputc('\n', stderr);
  if (!g_status.empty()) std::fputs(g_status.c_str(), stderr);
  std::fflush(stderr);
}

void set_color(bool on) { g_color.store(on); }
bool color() { return g_color.load(); }

int terminal_columns() {
  struct winsize ws {};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  if (const char* columns = std::getenv("COLUMNS")) {
    const int n = std::atoi(columns);
    if (n > 0) return n;
  }
  return 100;
}

void set_status(const std::string& text) {
  // One column short of the width: a line that fills the last column wraps on some terminals.
  const std::string line = fit(text, terminal_columns() - 1);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (line.empty() && g_status.empty()) return;
  std::fputs(kEraseLine, stderr);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  g_status = line;
}

void clear_status() { set_status(""); }

}  // namespace fluxbatch::log
