#include "fluxbatch/nn/linear.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/nf4_linear.h"
#include "fluxbatch/ops/per_image_linear.h"

#include <ATen/ATen.h>

#include <utility>

namespace fluxbatch::nn {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias, const at::TensorOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  // Inference only: no autograd state on parameters, so copying weights in needs no NoGradGuard.
  weight = register_parameter("weight", at::empty({out_features, in_features}, options), false);
  if (bias) this->bias = register_parameter("bias", at::empty({out_features}, options), false);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) const {
  if (const std::vector<LoraSet>* sets = lora_sets(); sets != nullptr && x.dim() >= 2) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out_features_;
    at::Tensor out = at::empty(shape, x.options());
    forward_lora(x, out, /*gelu_tanh=*/false, *sets, /*plain_forward=*/true);
    return out;
  }
  if (nf4_) return ops::nf4_linear(x, *nf4_, bias, scratch_.get());
  return ops::per_image_linear(x, weight, bias);
}

at::Tensor LinearImpl::forward_gelu_tanh(const at::Tensor& x) const {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features_;
  at::Tensor out = at::empty(shape, x.options());
  forward_out(x, out, /*gelu_tanh=*/true);
  return out;
}

void LinearImpl::forward_out(const at::Tensor& x, at::Tensor out, bool gelu_tanh) const {
  if (const std::vector<LoraSet>* sets = lora_sets(); sets != nullptr) return forward_lora(x, out, gelu_tanh, *sets, false);
  const at::Tensor w = nf4_ ? ops::nf4_dense_weight(*nf4_, x.scalar_type(), scratch_.get()) : weight;
  // Cast like nf4_linear casts it (bnb's bias.to(A.dtype)); a no-op for dense weights.
  const at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  ops::per_image_linear_out(out, x, w, b, gelu_tanh);
}

const std::vector<LoraSet>* LinearImpl::lora_sets() const {
  if (loras_.empty()) return nullptr;
  const std::vector<LoraSet>* sets = LoraScope::active();
  if (sets == nullptr) return nullptr;
  for (const LoraSet& set : *sets) {
    for (const LoraUse& use : set) {
      if (loras_.count(use.adapter)) return sets;
    }
  }
  return nullptr;
}

void LinearImpl::forward_lora(const at::Tensor& x, at::Tensor& out, bool gelu_tanh,
                              const std::vector<LoraSet>& sets, bool plain_forward) const {
  FLUXBATCH_CHECK(x.dim() >= 2 && static_cast<size_t>(x.size(0)) == sets.size(), std::invalid_argument,
                  "Linear: the LoRA scope has " + std::to_string(sets.size()) + " image(s), the input " +
                      std::to_string(x.dim() >= 1 ? x.size(0) : 0));
  const at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const at::Tensor xi = x.narrow(0, i, 1);  // [1, ..., in]
    at::Tensor oi = out.narrow(0, i, 1);      // [1, ..., out]
    std::vector<const LoraUse*> uses;
    for (const LoraUse& use : sets[static_cast<size_t>(i)]) {
      if (loras_.count(use.adapter) && use.scale != 0.0) uses.push_back(&use);
    }
    if (uses.empty()) {
      // What this image gets without side paths, alone or in any batch.
      if (nf4_ && plain_forward) {  // forward()'s NF4 path (the one-row GEMV on CUDA)
        oi.copy_(ops::nf4_linear(xi, *nf4_, bias, scratch_.get()));
      } else if (nf4_) {
        ops::per_image_linear_out(oi, xi, ops::nf4_dense_weight(*nf4_, x.scalar_type(), scratch_.get()), b, gelu_tanh);
      } else {
        ops::per_image_linear_out(oi, xi, weight, b, gelu_tanh);
      }
      continue;
    }
    const at::Tensor w = nf4_ ? ops::nf4_dense_weight(*nf4_, x.scalar_type(), scratch_.get()) : weight;
    ops::per_image_linear_out(oi, xi, w, b, /*gelu_tanh=*/false);
    // rows: [tokens, in]; target: the image's [tokens, out] (unit column stride, maybe a row stride).
    const at::Tensor rows = xi.contiguous().view({-1, in_features_});
    at::Tensor target = oi.view({-1, out_features_});
    for (const LoraUse* use : uses) {
      const LoraFactors& f = loras_.at(use->adapter);
      // PEFT: result + lora_B(lora_A(x)) * scaling. [tokens, rank], then accumulated into the target by the
      // GEMM itself (beta 1): the output is read and written once more, not three times. The target's
      // layout is the same whatever the batch, so an image still sums alike alone and in a batch.
      const at::Tensor down = at::mm(rows, f.down.t());
      target.addmm_(down, f.up.t(), /*beta=*/1.0, /*alpha=*/use->scale * f.alpha_scale);
    }
    if (gelu_tanh) at::gelu_(target, "tanh");
  }
}

void LinearImpl::set_lora(int id, LoraFactors factors, const std::string& what) {
  FLUXBATCH_CHECK(factors.down.dim() == 2 && factors.up.dim() == 2 && factors.down.size(1) == in_features_ &&
                      factors.up.size(0) == out_features_ && factors.up.size(1) == factors.down.size(0),
                  ModelError,
                  what + ": LoRA factors down " + std::to_string(factors.down.size(0)) + "x" +
                      std::to_string(factors.down.dim() == 2 ? factors.down.size(1) : 0) + ", up " +
                      std::to_string(factors.up.size(0)) + "x" +
                      std::to_string(factors.up.dim() == 2 ? factors.up.size(1) : 0) + " do not fit the layer [" +
                      std::to_string(out_features_) + ", " + std::to_string(in_features_) + "]");
  loras_[id] = std::move(factors);
}

void LinearImpl::remove_lora(int id) { loras_.erase(id); }

bool LinearImpl::merge_loras(const LoraSet& set, const c10::Device& keep_on) {
  if (nf4_ || !weight.defined()) return false;
  at::Tensor delta;  // [out, in], fp32
  for (const LoraUse& use : set) {
    const auto it = loras_.find(use.adapter);
    if (it == loras_.end() || use.scale == 0.0) continue;
    const at::Tensor product = at::mm(it->second.up.to(at::kFloat), it->second.down.to(at::kFloat));
    const double s = use.scale * it->second.alpha_scale;
    delta = delta.defined() ? delta.add_(product, s) : product.mul_(s);
  }
  if (!delta.defined()) return false;
  unmerge_loras();
  merged_original_ = weight.to(keep_on, /*non_blocking=*/false, /*copy=*/true);
  weight.copy_(weight.to(at::kFloat).add_(delta));
  return true;
}

void LinearImpl::unmerge_loras() {
  if (!merged_original_.defined()) return;
  weight.copy_(merged_original_);
  merged_original_ = at::Tensor();
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  move_nf4(device);
  for (auto& [id, f] : loras_) f = {f.down.to(device, dtype), f.up.to(device, dtype), f.alpha_scale};
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  move_nf4(device);
  for (auto& [id, f] : loras_) f = {f.down.to(device), f.up.to(device), f.alpha_scale};
}

void LinearImpl::move_nf4(const c10::Device& device) {
  if (!nf4_ || nf4_->device() == device) return;
  *nf4_ = nf4_->to(device);
  if (scratch_ && scratch_->defined() && scratch_->device() != device) *scratch_ = at::Tensor();
}

void LinearImpl::release_scratch() {
  if (scratch_) *scratch_ = at::Tensor();
}

void LinearImpl::set_nf4(quant::Nf4Tensor w, std::shared_ptr<at::Tensor> scratch, const std::string& what) {
  if (w.shape != std::vector<int64_t>{out_features_, in_features_}) {
    std::string got;
    for (int64_t d : w.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    throw ModelError(what + ": NF4 shape [" + got + "] does not match the layer's [" + std::to_string(out_features_) +
                     ", " + std::to_string(in_features_) + "]");
  }
  w.validate(what);
  nf4_ = std::make_shared<quant::Nf4Tensor>(std::move(w));
  scratch_ = std::move(scratch);
  // An undefined parameter is skipped by named_parameters(), so load_state no longer expects it.
  parameters_["weight"] = at::Tensor();
  weight = at::Tensor();
}

}  // namespace fluxbatch::nn
