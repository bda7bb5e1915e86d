// The CUDA caching allocator's settings, fixed before anything touches CUDA. fluxbatch turns on
// expandable segments (one growing virtual range per stream instead of many fixed cudaMalloc
// blocks), which keeps reserved close to allocated when batch sizes and resolutions change, unless
// the user configured the allocator through PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF.
#pragma once
#include <string>

namespace fluxbatch::runtime {

struct AllocatorSetup {
  std::string settings;           // the configuration string in force ("" when none)
  std::string source;             // "set by fluxbatch", "from PYTORCH_ALLOC_CONF", ...
  bool expandable_segments = false;
  std::string describe() const;  // "expandable_segments:True (set by fluxbatch)"
};

// Call first thing in main(), before libtorch initialises CUDA. Without either environment variable
// it sets PYTORCH_ALLOC_CONF=expandable_segments:True (inherited by anything that reads it later)
// and applies it through c10::CachingAllocator::setAllocatorSettings (the allocator reads its
// configuration lazily, but the runtime call does not depend on that). A user's own setting is left
// exactly as it is. Idempotent.
AllocatorSetup configure_allocator();

// What is in force now, without changing anything.
AllocatorSetup allocator_setup();

}  // namespace fluxbatch::runtime
