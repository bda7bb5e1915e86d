// Logging sink: stderr, serialised by a mutex so lines from the memory monitor never interleave.
#include "fluxbatch/core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

namespace fluxbatch::log {
namespace {

std::atomic<Level> g_level{Level::kInfo};
std::mutex g_mutex;
const auto g_start = std::chrono::steady_clock::now();

void emit(Level lvl, const char* tag, const std::string& message) {
  if (lvl < g_level.load()) return;
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[%8.3f] %s %s\n", t, tag, message.c_str());
  std::fflush(stderr);
}

}  // namespace

void set_level(Level level) { g_level.store(level); }
Level level() { return g_level.load(); }

void debug(const std::string& m) { emit(Level::kDebug, "debug", m); }
void info(const std::string& m) { emit(Level::kInfo, "info ", m); }
void warn(const std::string& m) { emit(Level::kWarn, "warn ", m); }
void error(const std::string& m) { emit(Level::kError, "error", m); }

}  // namespace fluxbatch::log
