#include "fluxbatch/runtime/execution/resume_index.h"

#include <limits>

#include "fluxbatch/core/error.h"

namespace fluxbatch::runtime {
namespace {

// The LoRAs recorded in a manifest line are the item's: same files (by content) at the same scales.
bool same_loras(const std::vector<job::LoraRef>& loras, const std::vector<io::ManifestLora>& recorded) {
  if (loras.size() != recorded.size()) return false;
  for (size_t i = 0; i < loras.size(); ++i) {
    job::LoraRef r;
    r.path = recorded[i].path;
    r.scale = recorded[i].scale;
    r.sha256 = recorded[i].sha256;
    if (!loras[i].same_as(r)) return false;
  }
  return true;
}

}  // namespace

bool records(const io::ManifestEntry& e, const job::RenderItem& item, const std::optional<std::string>& model) {
  const job::RenderParams& p = item.params;
  return same_loras(p.loras, e.loras) && e.prompt == item.prompt && e.seed == p.seed && e.width == p.width && e.height == p.height &&
         e.steps == p.steps && e.guidance == p.guidance && e.max_sequence_length == p.max_sequence_length &&
         (!model || e.model == *model);
}

ResumeIndex::ResumeIndex(const job::JobSpec& spec, const std::string& manifest_path, std::optional<std::string> model,
                         int64_t session_offset)
    : spec_(spec), model_(std::move(model)), reader_(manifest_path), session_offset_(session_offset) {
  if (spec.items.size() > std::numeric_limits<uint32_t>::max()) throw InputError("the job has too many images");
  positions_.reserve(spec.items.size());
  for (size_t i = 0; i < spec.items.size(); ++i) {
    positions_.emplace(std::string_view(spec.items[i].file), static_cast<uint32_t>(i));
  }
  flags_.assign(spec.items.size(), 0);
}

void ResumeIndex::refresh() {
  reader_.read(
      [this](const io::ManifestEntry& e, int64_t offset) {
        const auto it = positions_.find(std::string_view(e.file));
        if (it == positions_.end()) return;  // another job's image, or one this job no longer has
        uint8_t& flags = flags_[it->second];
        if (session_offset_ >= 0 && offset >= session_offset_) flags |= kSessionLine;
        if (e.status != io::ManifestStatus::kOk) return;
        // Only the last ok line counts: a later --overwrite run replaced the image.
        if (records(e, spec_.items[it->second], model_)) {
          flags |= kOkMatches;
        } else {
          flags &= static_cast<uint8_t>(~kOkMatches);
        }
      },
      &warnings_);
  if (first_ && session_offset_ < 0) session_offset_ = reader_.offset();
  first_ = false;
}

}  // namespace fluxbatch::runtime
