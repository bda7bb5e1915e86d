// A module's weights kept in host memory and copied to the device only for the stage that runs it
// (diffusers' enable_model_cpu_offload). The host copy is page-locked when the device is CUDA (one
// block for the whole module), so the trip in runs at bus speed and asynchronously; it is never
// written, so leaving the device is free: the module points at the host copy again and the device
// copies go back to the allocator.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <vector>

namespace fluxbatch::nn {

class PinnedWeights {
 public:
  // Takes over `module`'s tensors (parameters, buffers, NF4 Linear tensors) wherever they are:
  // from now on they live in host memory (pinned when `device` is CUDA), which is where the module
  // points until to_device(). The module must outlive this object and keep its structure.
  PinnedWeights(torch::nn::Module& module, c10::Device device);

  // Copies every tensor to the device (non-blocking from pinned memory, ordered on the current
  // stream before any kernel that reads it). No-op when already there or when the device is the CPU.
  void to_device();
  // The module reads the host copies again; the device copies and NF4 scratch buffers are released
  // to the caching allocator (empty its cache to return them to the driver).
  void to_host();

  bool on_device() const { return on_device_; }
  int64_t host_bytes() const { return host_bytes_; }  // what the host copies take

 private:
  struct Slot {
    at::Tensor slot;  // the module's tensor: its data is swapped between the two copies
    at::Tensor host;
  };
  torch::nn::Module& module_;
  c10::Device device_;
  std::vector<Slot> slots_;
  int64_t host_bytes_ = 0;
  bool on_device_ = false;
};

}  // namespace fluxbatch::nn
