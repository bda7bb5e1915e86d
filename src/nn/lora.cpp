#include "fluxbatch/nn/lora.h"

#include <algorithm>

namespace fluxbatch::nn {
namespace {

thread_local const std::vector<LoraSet>* g_active = nullptr;

}  // namespace

LoraScope::LoraScope(const std::vector<LoraSet>* per_image) : previous_(g_active) {
  const bool any = per_image != nullptr &&
                   std::any_of(per_image->begin(), per_image->end(), [](const LoraSet& s) { return !s.empty(); });
  g_active = any ? per_image : nullptr;
}

LoraScope::~LoraScope() { g_active = previous_; }

const std::vector<LoraSet>* LoraScope::active() { return g_active; }

}  // namespace fluxbatch::nn
