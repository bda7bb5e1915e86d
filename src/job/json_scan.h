// A small scanner over JSON text that finds where things are. nlohmann::json decodes the values
// but keeps no positions, so diagnostics ask this scanner for the byte offset of a key or value.
// Comments (// and /* */) are skipped exactly as nlohmann's ignore_comments lexer does.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fluxbatch::job::detail {

// A limit broken before parsing: too deep, too many values. Checked on raw (maybe invalid) text so
// that nlohmann never sees input that could exhaust the stack or memory.
struct PrescanIssue {
  size_t offset = 0;
  std::string message;
};
std::optional<PrescanIssue> prescan_json(std::string_view text, int max_depth, size_t max_values);

// The functions below require syntax-valid JSON (nlohmann accepted it) and an offset at the start
// of a token; a mismatch is a bug and throws std::logic_error.

size_t skip_whitespace(std::string_view text, size_t pos);

struct Member {
  std::string key;  // decoded
  size_t key_offset = 0;
  size_t value_offset = 0;
};
// Members of the object whose '{' is at `pos`, in file order (duplicates included).
std::vector<Member> object_members(std::string_view text, size_t pos);

// Offsets of the elements of the array whose '[' is at `pos`.
std::vector<size_t> array_elements(std::string_view text, size_t pos);

}  // namespace fluxbatch::job::detail
