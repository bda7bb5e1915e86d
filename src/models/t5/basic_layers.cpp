#include "models/t5/basic_layers.h"

#include <cmath>

namespace fluxbatch::models::layers {
namespace {
// Parameters are inference-only: no autograd bookkeeping.
at::Tensor empty_param(at::IntArrayRef shape, const at::TensorOptions& options) {
  return at::empty(shape, options.requires_grad(false));
}
}  // namespace

at::Tensor gelu_new(const at::Tensor& x) {
  const double c = std::sqrt(2.0 / 3.141592653589793);  // math.sqrt(2.0 / math.pi)
  return (x * 0.5) * (at::tanh((x + at::pow(x, 3.0) * 0.044715) * c) + 1.0);
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t dim, const at::TensorOptions& options) {
  weight = register_parameter("weight", empty_param({num_embeddings, dim}, options), false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) { return at::embedding(weight, ids); }

GroupNormImpl::GroupNormImpl(int64_t groups, int64_t channels, double eps, const at::TensorOptions& options)
    : groups_(groups), eps_(eps) {
  weight = register_parameter("weight", empty_param({channels}, options), false);
  bias = register_parameter("bias", empty_param({channels}, options), false);
}

at::Tensor GroupNormImpl::forward(const at::Tensor& x) { return at::group_norm(x, groups_, weight, bias, eps_); }

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding,
                       const at::TensorOptions& options)
    : padding_(padding) {
  weight = register_parameter("weight", empty_param({out_channels, in_channels, kernel_size, kernel_size}, options),
                              false);
  bias = register_parameter("bias", empty_param({out_channels}, options), false);
}

at::Tensor Conv2dImpl::forward(const at::Tensor& x) {
  return at::conv2d(x, weight, bias, /*stride=*/{1, 1}, /*padding=*/{padding_, padding_});
}

}  // namespace fluxbatch::models::layers
