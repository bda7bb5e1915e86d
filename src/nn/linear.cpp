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
  if (takes_fp8() && x.dim() >= 2) return forward(ops::quantize_fp8_rows(x), x.scalar_type());
  if (nf4_) return ops::nf4_linear(x, *nf4_, bias, scratch_.get());
  return ops::per_image_linear(x, weight, bias);
}

at::Tensor LinearImpl::forward(const ops::Fp8Rows& x, at::ScalarType out_dtype) const {
  FLUXBATCH_CHECK(takes_fp8(), std::invalid_argument, "Linear: fp8 rows given to a layer without fp8 compute");
  return ops::fp8_linear(x, fp8_weight(), bias, out_dtype);
}

void LinearImpl::forward_out(const ops::Fp8Rows& x, at::Tensor out) const {
  FLUXBATCH_CHECK(takes_fp8(), std::invalid_argument, "Linear: fp8 rows given to a layer without fp8 compute");
  ops::fp8_linear_out(out, x, fp8_weight(), bias);
}

at::Tensor LinearImpl::forward(const LinearInput& x, at::ScalarType out_dtype) const {
  return x.is_fp8() ? forward(x.fp8, out_dtype) : forward(x.dense);
}

void LinearImpl::forward_out(const LinearInput& x, at::Tensor out, bool gelu_tanh) const {
  if (!x.is_fp8()) return forward_out(x.dense, std::move(out), gelu_tanh);
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
  if (takes_fp8()) {
    ops::fp8_linear_out(out, ops::quantize_fp8_rows(x), fp8_weight(), bias, gelu_tanh);
    return;
  }
  const at::Tensor w = nf4_ ? ops::nf4_dense_weight(*nf4_, x.scalar_type(), scratch_.get()) : weight;
  // Cast like nf4_linear casts it (bnb's bias.to(A.dtype)); a no-op for dense weights.
  const at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  ops::per_image_linear_out(out, x, w, b, gelu_tanh);
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  move_quantized(device);
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  move_quantized(device);
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
