// Minimal leveled logging to stderr. Thread-safe; one line per call, prefixed with the elapsed time.
#pragma once
#include <string>

namespace fluxbatch::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kQuiet = 4 };

void set_level(Level level);
Level level();

void debug(const std::string& message);
void info(const std::string& message);
void warn(const std::string& message);
void error(const std::string& message);

}  // namespace fluxbatch::log
