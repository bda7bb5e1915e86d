// FluxTransformerBlock: the double-stream (MMDiT) block. Image and text streams keep separate weights
// and meet only inside the joint attention.
#pragma once
#include "fluxbatch/models/flux/ada_norms.h"
#include "fluxbatch/models/flux/attention.h"
#include "fluxbatch/models/flux/feed_forward.h"
#include "fluxbatch/nn/rope.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::models::flux {

struct StreamPair {
  at::Tensor x;        // image tokens [B, S, dim]
  at::Tensor context;  // text tokens  [B, L, dim]
};

class DoubleBlockImpl : public torch::nn::Module {
 public:
  DoubleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
  // x: [B, S, dim], context: [B, L, dim], temb: [B, dim], rope over L + S tokens -> both streams updated.
  StreamPair forward(const at::Tensor& x, const at::Tensor& context, const at::Tensor& temb,
                     const nn::RopeTables& rope) const;
  // The same with SiLU(temb) made once for all blocks (Conditioning::of).
  StreamPair forward(const at::Tensor& x, const at::Tensor& context, const Conditioning& temb,
                     const nn::RopeTables& rope) const;

  AdaLayerNormZero norm1{nullptr};
  AdaLayerNormZero norm1_context{nullptr};
  FluxAttention attn{nullptr};
  FeedForward ff{nullptr};
  FeedForward ff_context{nullptr};
};
TORCH_MODULE(DoubleBlock);

}  // namespace fluxbatch::models::flux
