#include "fluxbatch/models/flux/attention.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/attention.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {

FluxAttentionImpl::FluxAttentionImpl(int64_t dim, int64_t heads, int64_t head_dim, AttentionKind kind, double eps,
                                     const at::TensorOptions& options)
    : head_dim_(head_dim), kind_(kind) {
  const int64_t inner = heads * head_dim;
  // Registration order follows diffusers' __init__, so named_parameters() lists keys in checkpoint order.
  norm_q = register_module("norm_q", nn::RMSNorm(head_dim, eps, true, options));
  norm_k = register_module("norm_k", nn::RMSNorm(head_dim, eps, true, options));
  to_q = register_module("to_q", nn::Linear(dim, inner, true, options));
  to_k = register_module("to_k", nn::Linear(dim, inner, true, options));
  to_v = register_module("to_v", nn::Linear(dim, inner, true, options));
  if (kind == AttentionKind::kJoint) {
    to_out_0 = nn::Linear(inner, dim, true, options);
    to_out = register_module("to_out", torch::nn::ModuleList(to_out_0));
    norm_added_q = register_module("norm_added_q", nn::RMSNorm(head_dim, eps, true, options));
    norm_added_k = register_module("norm_added_k", nn::RMSNorm(head_dim, eps, true, options));
    add_q_proj = register_module("add_q_proj", nn::Linear(dim, inner, true, options));
    add_k_proj = register_module("add_k_proj", nn::Linear(dim, inner, true, options));
    add_v_proj = register_module("add_v_proj", nn::Linear(dim, inner, true, options));
    to_add_out = register_module("to_add_out", nn::Linear(inner, dim, true, options));
  }
}

std::pair<at::Tensor, at::Tensor> FluxAttentionImpl::forward_joint(const at::Tensor& x, const at::Tensor& context,
                                                                   const nn::RopeTables& rope) const {
  FLUXBATCH_CHECK(kind_ == AttentionKind::kJoint, InputError, "FluxAttention: forward_joint on a single-stream block");
  const int64_t text_len = context.size(1);
  // [B, S, H, Dh] per stream; the text stream comes first in the joint sequence. One statement per
  // joint tensor, so each stream's projections are freed as soon as it exists.
  const at::Tensor joint_q = nn::apply_rope(  // [B, L+S, H, Dh]
      at::cat({norm_added_q->forward(split_heads(add_q_proj->forward(context))),
               norm_q->forward(split_heads(to_q->forward(x)))},
              1),
      rope);
  const at::Tensor joint_k = nn::apply_rope(
      at::cat({norm_added_k->forward(split_heads(add_k_proj->forward(context))),
               norm_k->forward(split_heads(to_k->forward(x)))},
              1),
      rope);
  const at::Tensor out = nn::attention(  // [B, L+S, inner]
      joint_q, joint_k, at::cat({split_heads(add_v_proj->forward(context)), split_heads(to_v->forward(x))}, 1));

  const auto parts = out.split_with_sizes({text_len, out.size(1) - text_len}, 1);
  // diffusers makes both slices contiguous before the projections; doing the same keeps the GEMM inputs identical.
  return {to_out_0->forward(parts[1].contiguous()), to_add_out->forward(parts[0].contiguous())};
}

at::Tensor FluxAttentionImpl::forward_single(const at::Tensor& x, const nn::RopeTables& rope) const {
  const at::Tensor q = nn::apply_rope(norm_q->forward(split_heads(to_q->forward(x))), rope);  // [B, S, H, Dh]
  const at::Tensor k = nn::apply_rope(norm_k->forward(split_heads(to_k->forward(x))), rope);
  return nn::attention(q, k, split_heads(to_v->forward(x)));  // [B, S, inner]
}

}  // namespace fluxbatch::models::flux
