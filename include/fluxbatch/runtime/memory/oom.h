// Out-of-memory classification and cache release for the job runner's halve-and-retry.
#pragma once
#include <exception>
#include <string>

namespace fluxbatch::runtime {

// True when `message` shows an allocation failure of CUDA, cuBLAS, cuDNN or the allocator
// ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", ...).
// Sticky CUDA errors (illegal address, launch failure) are not: halving cannot fix them.
bool is_out_of_memory_message(const std::string& message);

// c10::OutOfMemoryError, std::bad_alloc, or any exception whose message passes
// is_out_of_memory_message.
bool is_out_of_memory(const std::exception& error);

// The exception's message for logs and the manifest: c10 errors without their C++ backtrace.
std::string exception_message(const std::exception& error);

// Returns the CUDA caching allocator's unused blocks to the driver (every device); a no-op
// without CUDA. Call it only once the tensors of the failed attempt are gone.
void release_cached_memory();

}  // namespace fluxbatch::runtime
