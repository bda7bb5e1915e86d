// Device selection: turns "cpu", "cuda", "cuda:N" into a checked c10::Device.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace fluxbatch::runtime {

// Parses and checks a device string; throws InputError for bad syntax, DeviceError when the
// device does not exist on this machine.
c10::Device parse_device(const std::string& text);

// "bf16" | "fp16" | "fp32" -> scalar type; throws InputError otherwise.
c10::ScalarType parse_dtype(const std::string& text);
std::string dtype_name(c10::ScalarType dtype);

bool cuda_available();
int cuda_device_count();
// libtorch's lazy CUDA init, which the caching allocator's per-device state (stats, memory fraction) needs;
// a no-op without CUDA devices or once done.
void init_cuda();

// Waits for the device's queued work (no-op on the CPU): stage timings are only honest after it.
void synchronize(c10::Device device);

// The caching allocator's peak of allocated bytes since the last reset (0 on the CPU).
int64_t peak_allocated_bytes(c10::Device device);
// Bytes the caching allocator has allocated now on a CUDA device; 0 on the CPU (not tracked).
int64_t allocated_bytes(c10::Device device);
void reset_peak_memory(c10::Device device);

}  // namespace fluxbatch::runtime
