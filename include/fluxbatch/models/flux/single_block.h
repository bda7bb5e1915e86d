// FluxSingleTransformerBlock: one stream over the joint sequence (text tokens first), attention and
// MLP in parallel from the same modulated input, fused into one output projection.
#pragma once
#include "fluxbatch/models/flux/ada_norms.h"
#include "fluxbatch/models/flux/attention.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/rope.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::models::flux {

class SingleBlockImpl : public torch::nn::Module {
 public:
  SingleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
  // h: [B, L+S, dim] (diffusers' cat([context, x], 1)), temb: [B, dim] -> [B, L+S, dim].
  // diffusers splits and re-concatenates the streams around every block; the values are the same.
  at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const nn::RopeTables& rope) const;

  AdaLayerNormZeroSingle norm{nullptr};
  nn::Linear proj_mlp{nullptr};  // [4*dim, dim]
  nn::Linear proj_out{nullptr};  // [dim, dim + 4*dim]
  FluxAttention attn{nullptr};

 private:
  // Whether the output projection's fp8 input rows are made from the attention and MLP products directly.
  bool fp8_joined_rows() const;
};
TORCH_MODULE(SingleBlock);

}  // namespace fluxbatch::models::flux
