// Device selection: turns "cpu", "cuda", "cuda:N" into a checked c10::Device.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

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

}  // namespace fluxbatch::runtime
