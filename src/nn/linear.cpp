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
    forward_lora({x, {}}, out, /*gelu_tanh=*/false, *sets, /*plain_forward=*/true);
    return out;
  }
  if (takes_fp8() && x.dim() >= 2) return forward(ops::quantize_fp8_rows(x), x.scalar_type());
  if (nf4_) return ops::nf4_linear(x, *nf4_, bias, scratch_.get());
  return ops::per_image_linear(x, weight, bias);
}

at::Tensor LinearImpl::forward(const ops::Fp8Rows& x, at::ScalarType out_dtype) const {
  FLUXBATCH_CHECK(takes_fp8(), std::invalid_argument, "Linear: fp8 rows given to a layer without fp8 compute");
  if (const std::vector<LoraSet>* sets = lora_sets(); sets != nullptr && x.data.dim() >= 2) {
    std::vector<int64_t> shape = x.data.sizes().vec();
    shape.back() = out_features_;
    at::Tensor out = at::empty(shape, x.data.options().dtype(out_dtype));
    forward_lora({at::Tensor(), x}, out, /*gelu_tanh=*/false, *sets, /*plain_forward=*/true);
    return out;
  }
  return ops::fp8_linear(x, fp8_weight(), bias, out_dtype);
}

at::Tensor LinearImpl::forward(const LinearInput& x, at::ScalarType out_dtype) const {
  return x.is_fp8() ? forward(x.fp8, out_dtype) : forward(x.dense);
}

void LinearImpl::forward_out(const LinearInput& x, at::Tensor out, bool gelu_tanh) const {
  if (!x.is_fp8()) return forward_out(x.dense, std::move(out), gelu_tanh);
  if (const std::vector<LoraSet>* sets = lora_sets(); sets != nullptr) {
    return forward_lora(x, out, gelu_tanh, *sets, /*plain_forward=*/false);
  }
  FLUXBATCH_CHECK(takes_fp8(), std::invalid_argument, "Linear: fp8 rows given to a layer without fp8 compute");
  ops::fp8_linear_out(out, x.fp8, fp8_weight(), bias, gelu_tanh);
}

quant::Fp8Tensor LinearImpl::fp8_weight() const {
  if (fp8_) return *fp8_;
  // NF4 resident: dequantized in its own dtype (into the shared scratch, as the bf16 path does) and
  // quantized per channel for this call only: the same fp8 weights nn::nf4_layers_to_fp8 would keep.
  return quant::quantize_fp8_per_channel(ops::nf4_dense_weight(*nf4_, nf4_->dtype, scratch_.get()));
}

at::Tensor LinearImpl::forward_gelu_tanh(const at::Tensor& x) const {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features_;
  at::Tensor out = at::empty(shape, x.options());
  forward_out(x, out, /*gelu_tanh=*/true);
  return out;
}

void LinearImpl::forward_out(const at::Tensor& x, at::Tensor out, bool gelu_tanh) const {
  if (const std::vector<LoraSet>* sets = lora_sets(); sets != nullptr) {
    return forward_lora({x, {}}, out, gelu_tanh, *sets, /*plain_forward=*/false);
  }
  if (takes_fp8()) {
    ops::fp8_linear_out(out, ops::quantize_fp8_rows(x), fp8_weight(), bias, gelu_tanh);
    return;
  }
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

void LinearImpl::forward_lora(const LinearInput& x, at::Tensor& out, bool gelu_tanh,
                              const std::vector<LoraSet>& sets, bool plain_forward) const {
  const at::Tensor& shape = x.rows();
  FLUXBATCH_CHECK(shape.dim() >= 2 && static_cast<size_t>(shape.size(0)) == sets.size(), std::invalid_argument,
                  "Linear: the LoRA scope has " + std::to_string(sets.size()) + " image(s), the input " +
                      std::to_string(shape.dim() >= 1 ? shape.size(0) : 0));
  const at::ScalarType dtype = x.is_fp8() ? out.scalar_type() : x.dense.scalar_type();
  const at::Tensor b = bias.defined() && bias.scalar_type() != dtype ? bias.to(dtype) : bias;
  // fp8 compute: the weight as the fp8 GEMM takes it, made once for the batch (an NF4 layer's per call).
  const quant::Fp8Tensor w8 = takes_fp8() ? fp8_weight() : quant::Fp8Tensor();
  for (int64_t i = 0; i < shape.size(0); ++i) {
    at::Tensor oi = out.narrow(0, i, 1);  // [1, ..., out]
    std::vector<const LoraUse*> uses;
    for (const LoraUse& use : sets[static_cast<size_t>(i)]) {
      if (loras_.count(use.adapter) && use.scale != 0.0) uses.push_back(&use);
    }
    // The base product, as this image gets it alone or in any batch: fp8 rows are quantized per row, so
    // one image's rows are the batch's rows. The GELU waits for the side paths.
    const bool gelu_now = gelu_tanh && uses.empty();
    if (takes_fp8()) {
      const ops::Fp8Rows rows = x.is_fp8() ? ops::Fp8Rows{x.fp8.data.narrow(0, i, 1), x.fp8.scale.narrow(0, i, 1)}
                                           : ops::quantize_fp8_rows(x.dense.narrow(0, i, 1));
      ops::fp8_linear_out(oi, rows, w8, bias);
      if (gelu_now) at::gelu_(oi, "tanh");
    } else if (nf4_ && plain_forward && uses.empty()) {  // forward()'s NF4 path (the one-row GEMV on CUDA)
      oi.copy_(ops::nf4_linear(x.dense.narrow(0, i, 1), *nf4_, bias, scratch_.get()));
    } else {
      const at::Tensor w = nf4_ ? ops::nf4_dense_weight(*nf4_, dtype, scratch_.get()) : weight;
      ops::per_image_linear_out(oi, x.dense.narrow(0, i, 1), w, b, gelu_now);
    }
    if (uses.empty()) continue;
    // rows: [tokens, in], the dense input (fp8 rows dequantized: the producer kept no dense copy, and the
    // base GEMM read the same values); target: the image's [tokens, out] (unit column stride).
    const at::Tensor rows = x.is_fp8() ? ops::dequantize_fp8_rows({x.fp8.data.narrow(0, i, 1), x.fp8.scale.narrow(0, i, 1)},
                                                                  dtype).view({-1, in_features_})
                                       : x.dense.narrow(0, i, 1).contiguous().view({-1, in_features_});
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
  if (nf4_ || fp8_ || !weight.defined()) return false;
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
  move_quantized(device);
  for (auto& [id, f] : loras_) f = {f.down.to(device, dtype), f.up.to(device, dtype), f.alpha_scale};
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  move_quantized(device);
  for (auto& [id, f] : loras_) f = {f.down.to(device), f.up.to(device), f.alpha_scale};
}

void LinearImpl::move_quantized(const c10::Device& device) {
  if (fp8_ && fp8_->device() != device) *fp8_ = fp8_->to(device);
  if (!nf4_ || nf4_->device() == device) return;
  *nf4_ = nf4_->to(device);
  if (scratch_ && scratch_->defined() && scratch_->device() != device) *scratch_ = at::Tensor();
}

std::vector<at::Tensor> LinearImpl::quantized_tensors() const {
  std::vector<at::Tensor> out;
  if (nf4_) {
    for (const at::Tensor* t : {&nf4_->packed, &nf4_->absmax, &nf4_->q8, &nf4_->nested_absmax, &nf4_->nested_quant_map}) {
      if (t->defined()) out.push_back(*t);
    }
  }
  if (fp8_) {
    out.push_back(fp8_->data);
    out.push_back(fp8_->scale);
  }
  return out;
}

void LinearImpl::set_fp8(quant::Fp8Tensor w, const std::string& what) {
  w.validate(what);
  FLUXBATCH_CHECK(w.rows() == out_features_ && w.cols() == in_features_, ModelError,
                  what + ": fp8 shape [" + std::to_string(w.rows()) + ", " + std::to_string(w.cols()) +
                      "] does not match the layer's [" + std::to_string(out_features_) + ", " +
                      std::to_string(in_features_) + "]");
  fp8_ = std::make_shared<quant::Fp8Tensor>(std::move(w));
  nf4_.reset();
  scratch_.reset();
  nf4_in_fp8_ = false;
  drop_dense_weight();
}

void LinearImpl::own_fp8_storage() {
  FLUXBATCH_CHECK(fp8_ != nullptr, std::invalid_argument, "Linear::own_fp8_storage: not an fp8 layer");
  fp8_ = std::make_shared<quant::Fp8Tensor>(quant::Fp8Tensor{fp8_->data.clone(), fp8_->scale.clone()});
  if (bias.defined()) bias.set_data(bias.clone());
}

void LinearImpl::compute_in_fp8() {
  FLUXBATCH_CHECK(nf4_ != nullptr, std::invalid_argument, "Linear::compute_in_fp8: only an NF4 layer keeps its weight");
  nf4_in_fp8_ = true;
}

void LinearImpl::drop_dense_weight() {
  // An undefined parameter is skipped by named_parameters(), so load_state no longer expects it.
  parameters_["weight"] = at::Tensor();
  weight = at::Tensor();
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
  fp8_.reset();
  drop_dense_weight();
}

}  // namespace fluxbatch::nn
