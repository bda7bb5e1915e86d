// diffusers FeedForward(activation_fn="gelu-approximate"): net.0.proj -> GELU(tanh) -> net.2.
#pragma once
#include "fluxbatch/nn/linear.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::models::flux {

class FeedForwardImpl : public torch::nn::Module {
 public:
  // Parameter names: net.0.proj [hidden, dim], net.2 [dim_out, hidden] (net.1 is a parameterless Dropout).
  FeedForwardImpl(int64_t dim, int64_t dim_out, int64_t hidden, const at::TensorOptions& options);
  // x: [B, S, dim] -> [B, S, dim_out]
  at::Tensor forward(const at::Tensor& x) const;
  // Whether forward may be given fp8 rows: the first layer computes in fp8 and has no LoRA side path
  // (those read its dense input).
  bool takes_fp8_rows() const;
  // The same from rows its producer already quantized to fp8 (takes_fp8_rows() only), out in `dtype`.
  at::Tensor forward(const ops::Fp8Rows& x, at::ScalarType dtype) const;

  nn::Linear proj_in{nullptr};   // net.0.proj
  nn::Linear proj_out{nullptr};  // net.2

 private:
  // The second layer on the first one's product before GELU: [B, S, hidden] -> [B, S, dim_out] in dtype.
  at::Tensor second(at::Tensor hidden, at::ScalarType dtype) const;
};
TORCH_MODULE(FeedForward);

}  // namespace fluxbatch::models::flux
