// `fluxbatch probe`: what memory each CUDA device has, as the planner should count it. Free is
// cudaMemGetInfo's free plus what PyTorch's caching allocator holds but does not use (reserved -
// allocated), the rule ComfyUI and Forge follow.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::runtime {

struct GpuMemory {
  int index = 0;
  std::string name;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;       // cudaMemGetInfo: free for any process
  int64_t reserved_bytes = 0;   // held by this process's caching allocator
  int64_t allocated_bytes = 0;  // of which live tensors use this much
  int64_t usable_bytes() const { return free_bytes + reserved_bytes - allocated_bytes; }
};

// One entry per CUDA device; empty without CUDA (a build without it, or no device).
std::vector<GpuMemory> probe_gpus();

// MemAvailable of /proc/meminfo (what the CPU can still take without swapping); 0 when unknown.
int64_t host_available_bytes();

// The probe as aligned text or as JSON ({"devices": [...]}).
std::string format_probe(const std::vector<GpuMemory>& gpus, bool json);

}  // namespace fluxbatch::runtime
