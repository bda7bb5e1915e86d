// TEMPORARY stand-in for job::item_to_json until the "jobs" branch (src/job/job_loader.cpp) is
// merged. Weak, so the real definition wins when it is linked; delete this file after the merge.
#include <string>

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job {

__attribute__((weak)) std::string item_to_json(const RenderItem& item) {
  return "{\"index\":" + std::to_string(item.index) + ",\"file\":\"" + item.file + "\"}";
}

}  // namespace fluxbatch::job
