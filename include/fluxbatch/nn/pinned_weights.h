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

// Every tensor of `module` once (parameters, buffers, NF4 / fp8 Linear tensors; tied weights share a
// TensorImpl and are swapped together).
std::vector<at::Tensor> module_tensors(torch::nn::Module& module);
// Frees the NF4 dequantize scratch of `module`'s Linears (the next forward makes it where it runs).
void release_scratch(torch::nn::Module& module);
// Bytes between two tensors in a host block (covers every dtype's alignment).
constexpr int64_t kAlignment = 256;
// One page-locked block of `bytes` as a uint8 tensor, freed with the last view of it. One block,
// because pinning tensor by tensor through the caching host allocator rounds each up to a power of
// two and costs a driver call per tensor. Undefined (pageable copies then: slower, synchronous
// transfers) when the driver refuses, e.g. past the host's lockable memory, or without CUDA.
at::Tensor pinned_block(int64_t bytes);

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
