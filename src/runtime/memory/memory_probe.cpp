#include "fluxbatch/runtime/memory/memory_probe.h"

#ifdef FLUXBATCH_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <cstdio>
#include <fstream>
#include <sstream>

#include "fluxbatch/core/error.h"

#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::runtime {

std::vector<GpuMemory> probe_gpus() {
  std::vector<GpuMemory> out;
#ifdef FLUXBATCH_WITH_CUDA
  init_cuda();  // the allocator's stats below need it
  for (int i = 0; i < cuda_device_count(); ++i) {
    const auto index = static_cast<c10::DeviceIndex>(i);
    const c10::cuda::CUDAGuard guard(index);
    size_t free = 0, total = 0;
    const cudaError_t status = cudaMemGetInfo(&free, &total);
    if (status != cudaSuccess) {
      throw DeviceError("cuda:" + std::to_string(i) + ": cudaMemGetInfo failed: " + cudaGetErrorString(status));
    }
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    constexpr size_t kAll = 0;  // StatType::AGGREGATE
    GpuMemory g;
    g.index = i;
    g.name = at::cuda::getDeviceProperties(index)->name;
    g.total_bytes = static_cast<int64_t>(total);
    g.free_bytes = static_cast<int64_t>(free);
    g.reserved_bytes = stats.reserved_bytes[kAll].current;
    g.allocated_bytes = stats.allocated_bytes[kAll].current;
    out.push_back(g);
  }
#endif
  return out;
}

int64_t host_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t kib = 0;
    fields >> kib;
    return kib * 1024;
  }
  return 0;
}

std::string format_probe(const std::vector<GpuMemory>& gpus, bool json) {
  std::string out = json ? "{\"devices\": [" : "";
  for (size_t i = 0; i < gpus.size(); ++i) {
    const GpuMemory& g = gpus[i];
    if (json) {
      std::string name;
      for (const char c : g.name) name += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
      out += std::string(i ? ", " : "") + "{\"index\": " + std::to_string(g.index) + ", \"name\": \"" + name +
             "\", \"total_bytes\": " + std::to_string(g.total_bytes) + ", \"free_bytes\": " +
             std::to_string(g.free_bytes) + ", \"reserved_bytes\": " + std::to_string(g.reserved_bytes) +
             ", \"allocated_bytes\": " + std::to_string(g.allocated_bytes) +
             ", \"usable_bytes\": " + std::to_string(g.usable_bytes()) + "}";
      continue;
    }
    char line[512];
    std::snprintf(line, sizeof line, "cuda:%d  %s\n  total %s, free %s, allocator holds %s (%s in use), usable %s\n",
                  g.index, g.name.c_str(), format_bytes(g.total_bytes).c_str(), format_bytes(g.free_bytes).c_str(),
                  format_bytes(g.reserved_bytes).c_str(), format_bytes(g.allocated_bytes).c_str(),
                  format_bytes(g.usable_bytes()).c_str());
    out += line;
  }
  return json ? out + "]}\n" : out;
}

}  // namespace fluxbatch::runtime
