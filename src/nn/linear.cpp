#include "fluxbatch/nn/linear.h"

#include <ATen/ATen.h>

namespace fluxbatch::nn {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias, const at::TensorOptions& options) {
  // Inference only: no autograd state on parameters, so copying weights in needs no NoGradGuard.
  weight = register_parameter("weight", at::empty({out_features, in_features}, options), false);
  if (bias) this->bias = register_parameter("bias", at::empty({out_features}, options), false);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) const { return at::linear(x, weight, bias); }

}  // namespace fluxbatch::nn
