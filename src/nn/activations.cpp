#include "fluxbatch/nn/activations.h"

#include <ATen/ATen.h>

namespace fluxbatch::nn {

at::Tensor silu(const at::Tensor& x) { return at::silu(x); }

at::Tensor gelu_tanh(const at::Tensor& x) { return at::gelu(x, "tanh"); }

at::Tensor gelu_tanh_(at::Tensor x) { return at::gelu_(x, "tanh"); }

at::Tensor gelu(const at::Tensor& x) { return at::gelu(x); }

at::Tensor quick_gelu(const at::Tensor& x) { return x * at::sigmoid(x * 1.702); }

}  // namespace fluxbatch::nn
