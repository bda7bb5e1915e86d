// Activations as the reference models spell them, each one ATen call (or the reference's exact op
// sequence) so the rounding matches PyTorch.
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::nn {

// torch.nn.SiLU: x * sigmoid(x)
at::Tensor silu(const at::Tensor& x);
// torch.nn.GELU(approximate="tanh") (diffusers "gelu-approximate", transformers "gelu_new"/"gelu_pytorch_tanh")
at::Tensor gelu_tanh(const at::Tensor& x);
// The same in place (one tensor instead of two for the large feed-forward hidden states); returns x.
at::Tensor gelu_tanh_(at::Tensor x);
// torch.nn.GELU() (erf form)
at::Tensor gelu(const at::Tensor& x);
// transformers QuickGELUActivation: x * sigmoid(1.702 * x)
at::Tensor quick_gelu(const at::Tensor& x);

}  // namespace fluxbatch::nn
