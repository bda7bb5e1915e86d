#include "fluxbatch/job/job_error.h"

namespace fluxbatch::job {
namespace {

std::string join_lines(const std::vector<Diagnostic>& diagnostics) {
  std::string text;
  for (const auto& diagnostic : diagnostics) {
    if (!text.empty()) text += '\n';
    text += diagnostic.to_string();
  }
  return text;
}

}  // namespace

std::string Diagnostic::to_string() const {
  std::string where = file;
  if (line > 0) {
    where += (where.empty() ? "" : ":") + std::to_string(line);
    if (column > 0) where += ":" + std::to_string(column);
  }
  if (!field.empty()) where += (where.empty() ? "" : " ") + field;
  return where.empty() ? message : where + ": " + message;
}

JobError::JobError(std::vector<Diagnostic> diagnostics)
    : InputError(join_lines(diagnostics)), diagnostics_(std::move(diagnostics)) {}

}  // namespace fluxbatch::job
