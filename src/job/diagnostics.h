// Collects problems while a job file is checked; positions stay byte offsets until the end, when
// one forward pass over the text turns them into line:column.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "fluxbatch/job/job_error.h"
#include "job/text_util.h"

namespace fluxbatch::job::detail {

class DiagnosticSink {
 public:
  // `columns` is false for prompt lists, whose positions are whole lines.
  DiagnosticSink(std::string file, std::string_view text, bool columns);

  // A problem at byte `offset` of the text (kNoOffset: the file as a whole).
  void add(size_t offset, std::string field, std::string message);
  // A problem in a command-line value: no file, no position.
  void add_option(std::string field, std::string message);

  size_t count() const { return total_; }
  bool empty() const { return total_ == 0; }

  // "file:line:col" (or "file:line") of an offset, for RenderItem::location. Cheap when called
  // with increasing offsets.
  std::string location(size_t offset);

  // The problems in file order (command-line ones first), at most kMaxDiagnostics of them plus a
  // line counting the rest.
  std::vector<Diagnostic> finish() const;

 private:
  struct Pending {
    size_t offset;
    bool option;
    std::string field;
    std::string message;
  };
  std::string file_;
  std::string_view text_;
  bool columns_;
  std::vector<Pending> pending_;
  size_t total_ = 0;
  PositionCursor location_cursor_;
};

// "items[3]" + "steps" -> "items[3].steps"; odd keys are quoted: items[3]["my key"].
std::string field_path(const std::string& parent, const std::string& key);

}  // namespace fluxbatch::job::detail
