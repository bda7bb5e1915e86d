// Scaled dot-product attention on [B, S, H, D] tensors, the layout the reference projections
// produce, through at::scaled_dot_product_attention (so the backend choice, flash / memory-efficient /
// math, is PyTorch's, as in diffusers' "native" attention backend).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fluxbatch::nn {

// q: [B, Sq, H, D], k, v: [B, Sk, H, D] -> [B, Sq, H*D] in q's dtype.
// mask: broadcastable to [B, H, Sq, Sk], bool (true = attend) or additive; scale defaults to 1/sqrt(D).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask = std::nullopt,
                     std::optional<double> scale = std::nullopt, bool is_causal = false);

}  // namespace fluxbatch::nn
