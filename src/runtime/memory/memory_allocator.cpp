#include "fluxbatch/runtime/memory/memory_allocator.h"

#include <c10/core/AllocatorConfig.h>

#include <cstdlib>

namespace fluxbatch::runtime {
namespace {

constexpr const char* kDefaultSettings = "expandable_segments:True";

// The variable the allocator would read, in its own order of precedence.
const char* user_variable() {
  for (const char* name : {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"}) {
    const char* value = std::getenv(name);
    if (value != nullptr) return name;
  }
  return nullptr;
}

std::string& chosen_source() {
  static std::string source;
  return source;
}

}  // namespace

std::string AllocatorSetup::describe() const {
  return (settings.empty() ? std::string("(defaults)") : settings) + " (" + source + ")";
}

AllocatorSetup configure_allocator() {
  if (chosen_source().empty()) {
    if (const char* name = user_variable()) {
      chosen_source() = std::string("from ") + name;
    } else {
      ::setenv("PYTORCH_ALLOC_CONF", kDefaultSettings, 0);
      c10::CachingAllocator::setAllocatorSettings(kDefaultSettings);
      chosen_source() = "set by fluxbatch";
    }
  }
  return allocator_setup();
}

AllocatorSetup allocator_setup() {
  AllocatorSetup out;
  out.settings = c10::CachingAllocator::getAllocatorSettings();
  out.expandable_segments = c10::CachingAllocator::AcceleratorAllocatorConfig::use_expandable_segments();
  if (!chosen_source().empty()) {
    out.source = chosen_source();
  } else if (const char* name = user_variable()) {
    out.source = std::string("from ") + name;
  } else {
    out.source = "torch defaults";
  }
  return out;
}

}  // namespace fluxbatch::runtime
