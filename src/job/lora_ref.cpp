#include <filesystem>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::job {

std::string LoraRef::name() const { return std::filesystem::path(path).stem().string(); }

bool LoraRef::same_as(const LoraRef& other) const {
  if (scale != other.scale) return false;
  // The content decides when both are known: a LoRA moved to another folder is the same LoRA, and a
  // file replaced in place is not.
  if (!sha256.empty() && !other.sha256.empty()) return sha256 == other.sha256;
  return path == other.path;
}

}  // namespace fluxbatch::job
