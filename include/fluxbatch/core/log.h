// Minimal leveled logging to stderr. Thread-safe; one line per call, prefixed with the elapsed time.
// On a terminal it can also keep one live status line at the bottom (progress): every log line is
// printed above it and the status line is drawn again after it, so the two never tear each other.
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

// Writes `line` as it is (no time, no level; shown whatever the level): another process's log line,
// e.g. a --devices worker's, kept above the live status line like any other.
void passthrough(const std::string& line);

// Colours the level tags (warn yellow, error red, debug dim) with ANSI escapes. Off by default; the
// CLI turns it on for a terminal unless NO_COLOR is set (https://no-color.org) or TERM is "dumb".
void set_color(bool on);
bool color();

// The live status line (stderr must be a terminal; the caller decides). set_status draws `text`
// (cut to the terminal's width so it never wraps) in place of the previous one; "" removes it.
// While a status line is shown, log lines are written above it.
void set_status(const std::string& text);
void clear_status();

// The terminal's width in columns for stderr (TIOCGWINSZ), else $COLUMNS, else 100.
int terminal_columns();

}  // namespace fluxbatch::log
