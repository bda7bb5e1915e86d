#include "fluxbatch/runtime/memory/oom.h"

#include <c10/util/Exception.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <array>
#include <cctype>
#include <new>

#include "fluxbatch/runtime/device.h"

namespace fluxbatch::runtime {

bool is_out_of_memory_message(const std::string& message) {
  std::string lower = message;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // Lower-cased needles; "out of memory" covers CUDA's "CUDA out of memory" and
  // cudaErrorMemoryAllocation's "out of memory" text.
  static const std::array<const char*, 6> kNeedles = {
      "out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
      "cusolver_status_alloc_failed", "cufft_alloc_failed", "not enough memory"};
  for (const char* needle : kNeedles) {
    if (lower.find(needle) != std::string::npos) return true;
  }
  return false;
}

bool is_out_of_memory(const std::exception& error) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr) return true;
  if (dynamic_cast<const std::bad_alloc*>(&error) != nullptr) return true;
  return is_out_of_memory_message(error.what());
}

std::string exception_message(const std::exception& error) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&error)) return c10_error->what_without_backtrace();
  return error.what();
}

void release_cached_memory() {
#ifdef FLUXBATCH_WITH_CUDA
  if (cuda_available()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

}  // namespace fluxbatch::runtime
