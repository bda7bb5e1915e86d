// Byte-level text helpers for the job loader: UTF-8 checks and offset -> line:column.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fluxbatch::job::detail {

inline constexpr size_t kNoOffset = static_cast<size_t>(-1);

// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF are ill-formed), or kNoOffset.
size_t find_invalid_utf8(std::string_view text);

// The problem of a prompt in one phrase ("must not be empty", "is not valid UTF-8 ..."), or "".
// Tab, newline and carriage return are the only control characters a prompt may hold.
std::string prompt_problem(std::string_view prompt);

// Resolves byte offsets to 1-based line and column (columns count code points). Moving forward
// is incremental, so offsets asked in increasing order cost one pass over the text in total.
class PositionCursor {
 public:
  explicit PositionCursor(std::string_view text) : text_(text) {}
  struct Position {
    int line = 1;
    int column = 1;
  };
  Position at(size_t offset);

 private:
  std::string_view text_;
  size_t offset_ = 0;
  Position position_;
};

// `text` shortened to at most `max_bytes` (on a character boundary) with "..." appended when cut.
std::string truncate_utf8(std::string_view text, size_t max_bytes);

}  // namespace fluxbatch::job::detail
