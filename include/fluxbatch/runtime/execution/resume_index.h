// What manifest.jsonl says about a job's images, kept compact enough for a job of a million images:
// one flag byte per image and a map from file name to image (views of the job's own strings; no
// manifest entry is kept). Read in full once, then incrementally: workers sharing an output directory
// refresh it to see the lines the others appended. Torch-free.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::runtime {

// True when manifest line `e` records `item` (prompt, seed, size, steps, guidance, max_sequence_length
// and, when given, model): the resume rule's comparison.
bool records(const io::ManifestEntry& e, const job::RenderItem& item, const std::optional<std::string>& model);

class ResumeIndex {
 public:
  // `spec` must outlive the index and keep its items where they are. Reads nothing yet.
  // session_offset: manifest lines starting at or after this byte offset were written during this
  // session (by any worker); -1: wherever the first refresh() ends.
  ResumeIndex(const job::JobSpec& spec, const std::string& manifest_path, std::optional<std::string> model,
              int64_t session_offset = -1);

  // Reads the lines appended since the last call (the whole manifest the first time).
  void refresh();

  // The last "ok" line of item `position`'s file records this item (the resume rule; the file itself
  // is not looked at).
  bool ok_line_matches(size_t position) const { return (flags_[position] & kOkMatches) != 0; }
  // A line of this session (ok or failed) names the item's file: some worker finished it already.
  bool session_line(size_t position) const { return (flags_[position] & kSessionLine) != 0; }

  const std::vector<std::string>& warnings() const { return warnings_; }  // unreadable lines
  int64_t offset() const { return reader_.offset(); }
  int64_t session_offset() const { return session_offset_; }

 private:
  static constexpr uint8_t kOkMatches = 1;
  static constexpr uint8_t kSessionLine = 2;
  const job::JobSpec& spec_;
  std::optional<std::string> model_;
  io::ManifestReader reader_;
  int64_t session_offset_;
  bool first_ = true;
  std::unordered_map<std::string_view, uint32_t> positions_;  // item.file -> position in spec.items
  std::vector<uint8_t> flags_;
  std::vector<std::string> warnings_;
};

}  // namespace fluxbatch::runtime
