#include "fluxbatch/nn/norms.h"

#include <ATen/ATen.h>

namespace fluxbatch::nn {

at::Tensor layer_norm(const at::Tensor& x, double eps) {
  return at::layer_norm(x, {x.size(-1)}, /*weight=*/{}, /*bias=*/{}, eps);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, bool elementwise_affine, const at::TensorOptions& options)
    : dim_(dim), eps_(eps) {
  if (elementwise_affine) weight = register_parameter("weight", at::empty({dim}, options), false);
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) const { return at::rms_norm(x, {dim_}, weight, eps_); }

LayerNormImpl::LayerNormImpl(int64_t dim, double eps, bool elementwise_affine, bool bias,
                             const at::TensorOptions& options)
    : dim_(dim), eps_(eps) {
  if (elementwise_affine) {
    weight = register_parameter("weight", at::empty({dim}, options), false);
    if (bias) this->bias = register_parameter("bias", at::empty({dim}, options), false);
  }
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) const {
  return at::layer_norm(x, {dim_}, weight, bias, eps_);
}

}  // namespace fluxbatch::nn
