#include "fluxbatch/nn/pinned_weights.h"

#include "fluxbatch/core/log.h"
#include "fluxbatch/nn/linear.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <set>
#include <string>

namespace fluxbatch::nn {
namespace {

// The module itself and every submodule that is a Linear. (modules(include_self) would need the
// top-level module to live in a shared_ptr.)
template <typename Fn>
void for_each_linear(torch::nn::Module& module, Fn fn) {
  if (auto* self = dynamic_cast<LinearImpl*>(&module)) fn(*self);
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (auto* linear = dynamic_cast<LinearImpl*>(child.get())) fn(*linear);
  }
}

}  // namespace

std::vector<at::Tensor> module_tensors(torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  std::set<const void*> seen;
  const auto add = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
  };
  for (const at::Tensor& p : module.parameters()) add(p);
  for (const at::Tensor& b : module.buffers()) add(b);
  for_each_linear(module, [&](const LinearImpl& linear) {
    for (const at::Tensor& t : linear.quantized_tensors()) add(t);
  });
  return out;
}

void release_scratch(torch::nn::Module& module) {
  for_each_linear(module, [](LinearImpl& linear) { linear.release_scratch(); });
}

at::Tensor pinned_block(int64_t bytes) {
#ifdef FLUXBATCH_WITH_CUDA
  void* ptr = nullptr;
  const cudaError_t status = cudaHostAlloc(&ptr, static_cast<size_t>(std::max<int64_t>(bytes, 1)), cudaHostAllocDefault);
  if (status == cudaSuccess) {
    return at::from_blob(ptr, {bytes}, [](void* p) { (void)cudaFreeHost(p); }, at::TensorOptions().dtype(at::kByte));
  }
  (void)cudaGetLastError();  // clear the sticky error state
  log::warn("offload: could not pin " + std::to_string(bytes >> 20) + " MiB of host memory (" +
            cudaGetErrorString(status) + "); the weights wait in pageable memory (slower transfers)");
#else
  (void)bytes;
#endif
  return at::Tensor();
}

PinnedWeights::PinnedWeights(torch::nn::Module& module, c10::Device device) : module_(module), device_(device) {
  // The weights are inference tensors (loaded under InferenceMode): set_data needs it too.
  const c10::InferenceMode inference;
  const std::vector<at::Tensor> tensors = module_tensors(module);
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (const at::Tensor& t : tensors) {
    offsets.push_back(total);
    total += (static_cast<int64_t>(t.nbytes()) + kAlignment - 1) / kAlignment * kAlignment;
  }
  const at::Tensor arena = device.is_cuda() ? pinned_block(total) : at::Tensor();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    at::Tensor host;
    if (arena.defined()) {
      // A view of the page-locked block, of t's dtype and shape.
      host = arena.narrow(0, offsets[i], static_cast<int64_t>(t.nbytes())).view(t.scalar_type()).view(t.sizes());
      host.copy_(t);
    } else {
      // Its own TensorImpl: `t` and its CPU copy may be one tensor, and swapping t's data must leave
      // the host copy as it is.
      host = t.to(c10::Device(c10::kCPU)).detach();
    }
    t.set_data(host);
    host_bytes_ += static_cast<int64_t>(host.nbytes());
    slots_.push_back({t, host});
  }
  release_scratch(module);
}

void PinnedWeights::to_device() {
  if (on_device_ || device_.is_cpu()) return;
  const c10::InferenceMode inference;
  for (Slot& s : slots_) s.slot.set_data(s.host.to(device_, /*non_blocking=*/true));
  on_device_ = true;
}

void PinnedWeights::to_host() {
  if (!on_device_) return;
  const c10::InferenceMode inference;
  for (Slot& s : slots_) s.slot.set_data(s.host);
  release_scratch(module_);
  on_device_ = false;
}

}  // namespace fluxbatch::nn
