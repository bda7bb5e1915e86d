#include "fluxbatch/nn/pinned_weights.h"

#include "fluxbatch/nn/linear.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <set>

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

// Every tensor of `module` once (tied weights share a TensorImpl and are swapped together).
std::vector<at::Tensor> module_tensors(torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  std::set<const void*> seen;
  const auto add = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.unsafeGetTensorImpl()).second) out.push_back(t);
  };
  for (const at::Tensor& p : module.parameters()) add(p);
  for (const at::Tensor& b : module.buffers()) add(b);
  for_each_linear(module, [&](const LinearImpl& linear) {
    if (!linear.is_nf4()) return;
    const quant::Nf4Tensor& w = linear.nf4();
    for (const at::Tensor* t : {&w.packed, &w.absmax, &w.q8, &w.nested_absmax, &w.nested_quant_map}) add(*t);
  });
  return out;
}

void release_scratch(torch::nn::Module& module) {
  for_each_linear(module, [](LinearImpl& linear) { linear.release_scratch(); });
}

}  // namespace

PinnedWeights::PinnedWeights(torch::nn::Module& module, c10::Device device) : module_(module), device_(device) {
  // The weights are inference tensors (loaded under InferenceMode): set_data needs it too.
  const c10::InferenceMode inference;
  const bool pin = device.is_cuda();
  for (const at::Tensor& t : module_tensors(module)) {
    at::Tensor host = t.to(c10::Device(c10::kCPU));
    if (pin && !host.is_pinned()) host = host.pin_memory();
    // Its own TensorImpl: `t` and `host` may still be one tensor here, and swapping t's data must
    // leave the host copy as it is.
    host = host.detach();
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
