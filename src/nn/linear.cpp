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
  const at::Tensor w = nf4_ ? ops::nf4_dense_weight(*nf4_, x.scalar_type(), scratch_.get()) : weight;
  // Cast like nf4_linear casts it (bnb's bias.to(A.dtype)); a no-op for dense weights.
  const at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  ops::per_image_linear_out(out, x, w, b, gelu_tanh);
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  torch::nn::Module::to(device, dtype, non_blocking);
  move_nf4(device);
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  move_nf4(device);
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
