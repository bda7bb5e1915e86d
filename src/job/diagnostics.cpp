#include "job/diagnostics.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job::detail {
namespace {

// Enough to find every problem a user could fix in one sitting, without unbounded memory.
constexpr size_t kMaxPending = 100000;

bool is_plain_key(const std::string& key) {
  if (key.empty() || key.size() > 64) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '$';
  });
}

}  // namespace

DiagnosticSink::DiagnosticSink(std::string file, std::string_view text, bool columns)
    : file_(std::move(file)), text_(text), columns_(columns), location_cursor_(text) {}

void DiagnosticSink::add(size_t offset, std::string field, std::string message) {
  if (++total_ > kMaxPending) return;
  pending_.push_back({offset, false, std::move(field), std::move(message)});
}

void DiagnosticSink::add_option(std::string field, std::string message) {
  if (++total_ > kMaxPending) return;
  pending_.push_back({kNoOffset, true, std::move(field), std::move(message)});
}

std::string DiagnosticSink::location(size_t offset) {
  const auto position = location_cursor_.at(offset);
  std::string result = file_ + ":" + std::to_string(position.line);
  if (columns_) result += ":" + std::to_string(position.column);
  return result;
}

std::vector<Diagnostic> DiagnosticSink::finish() const {
  std::vector<const Pending*> order;
  order.reserve(pending_.size());
  for (const auto& pending : pending_) order.push_back(&pending);
  // Command-line problems first, then file-level ones, then by position.
  std::stable_sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) {
    if (a->option != b->option) return a->option;
    const size_t ka = a->offset == kNoOffset ? 0 : a->offset + 1;
    const size_t kb = b->offset == kNoOffset ? 0 : b->offset + 1;
    return ka < kb;
  });
  std::vector<Diagnostic> result;
  PositionCursor cursor(text_);
  for (const Pending* pending : order) {
    if (result.size() == kMaxDiagnostics) break;
    Diagnostic diagnostic;
    if (!pending->option) diagnostic.file = file_;
    if (pending->offset != kNoOffset) {
      const auto position = cursor.at(pending->offset);
      diagnostic.line = position.line;
      diagnostic.column = columns_ ? position.column : 0;
    }
    diagnostic.field = pending->field;
    diagnostic.message = pending->message;
    result.push_back(std::move(diagnostic));
  }
  if (total_ > result.size()) {
    Diagnostic more;
    more.file = file_;
    more.message = "... and " + std::to_string(total_ - result.size()) +
                   " more problems (only the first " + std::to_string(result.size()) +
                   " are listed)";
    result.push_back(std::move(more));
  }
  return result;
}

std::string field_path(const std::string& parent, const std::string& key) {
  if (is_plain_key(key)) return parent.empty() ? key : parent + "." + key;
  const std::string quoted = nlohmann::json(truncate_utf8(key, 64))
                                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return parent + "[" + quoted + "]";
}

}  // namespace fluxbatch::job::detail
