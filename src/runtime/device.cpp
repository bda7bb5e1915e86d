#include "fluxbatch/runtime/device.h"

#include "fluxbatch/core/error.h"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace fluxbatch::runtime {

bool cuda_available() { return at::hasCUDA() && at::detail::getCUDAHooks().deviceCount() > 0; }

int cuda_device_count() { return cuda_available() ? static_cast<int>(at::detail::getCUDAHooks().deviceCount()) : 0; }

void init_cuda() {
  if (cuda_device_count() > 0) at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
}

c10::Device parse_device(const std::string& text) {
  if (text == "cpu") return c10::Device(c10::kCPU);
  if (text.rfind("cuda", 0) != 0) {
    throw InputError("--device: expected cpu, cuda or cuda:N, got '" + text + "'");
  }
  int index = 0;
  if (text.size() > 4) {
    if (text[4] != ':' || text.size() == 5 || text.size() > 8 ||
        text.find_first_not_of("0123456789", 5) != std::string::npos) {
      throw InputError("--device: expected cpu, cuda or cuda:N, got '" + text + "'");
    }
    index = std::stoi(text.substr(5));
  }
  if (!cuda_available()) {
    throw DeviceError("--device " + text + ": no CUDA device is available on this machine (use --device cpu)");
  }
  if (index >= cuda_device_count()) {
    throw DeviceError("--device " + text + ": this machine has " + std::to_string(cuda_device_count()) +
                      " CUDA device(s)");
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void synchronize(c10::Device device) {
#ifdef FLUXBATCH_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

#ifdef FLUXBATCH_WITH_CUDA
namespace {
// Stats asked before the lazy CUDA init (a tool measuring from its very start) fail with "Invalid device argument".
c10::DeviceIndex stats_index(c10::Device device) {
  init_cuda();
  return device.index() < 0 ? 0 : device.index();
}
}  // namespace
#endif

int64_t peak_allocated_bytes(c10::Device device) {
#ifdef FLUXBATCH_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(stats_index(device));
    return stats.allocated_bytes[0].peak;  // [0]: the aggregate over pool types
  }
#endif
  (void)device;
  return 0;
}

int64_t allocated_bytes(c10::Device device) {
#ifdef FLUXBATCH_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(stats_index(device));
    return stats.allocated_bytes[0].current;
  }
#endif
  (void)device;
  return 0;
}

void reset_peak_memory(c10::Device device) {
#ifdef FLUXBATCH_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(stats_index(device));
#else
  (void)device;
#endif
}

c10::ScalarType parse_dtype(const std::string& text) {
  if (text == "bf16" || text == "bfloat16") return c10::kBFloat16;
  if (text == "fp16" || text == "float16") return c10::kHalf;
  if (text == "fp32" || text == "float32") return c10::kFloat;
  throw InputError("--dtype: expected bf16, fp16 or fp32, got '" + text + "'");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kBFloat16: return "bf16";
    case c10::kHalf: return "fp16";
    case c10::kFloat: return "fp32";
    default: return c10::toString(dtype);
  }
}

}  // namespace fluxbatch::runtime
