#include "fluxbatch/models/flux/attention.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/attention.h"
#include "fluxbatch/ops/fp8_attention.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/qk_norm_rope.h"

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

std::pair<at::Tensor, at::Tensor> FluxAttentionImpl::forward_joint(const nn::LinearInput& x,
                                                                   const nn::LinearInput& context,
                                                                   const nn::RopeTables& rope, at::ScalarType dtype) const {
  FLUXBATCH_CHECK(kind_ == AttentionKind::kJoint, InputError, "FluxAttention: forward_joint on a single-stream block");
  const int64_t batch = x.rows().size(0), text_len = context.rows().size(1), image_len = x.rows().size(1);
  const int64_t inner = to_q->out_features();
  // The joint sequence, text tokens first: each stream's projection is written straight into its token
  // range (no concatenation), then q and k get their per-stream RMSNorm and RoPE in place, in the
  // [B, L+S, H, Dh] layout attention reads.
  auto joint = [&](const nn::Linear& text_proj, const nn::Linear& image_proj) {
    at::Tensor out = at::empty({batch, text_len + image_len, inner}, rope.cos.options().dtype(dtype));  // [B, L+S, inner]
    text_proj->forward_out(context, out.narrow(1, 0, text_len));
    image_proj->forward_out(x, out.narrow(1, text_len, image_len));
    return out;
  };
  if (fp8_attention_) {
    // q and k straight from the norm + RoPE kernel into e4m3, v quantized per image; the output's e4m3 rows go
    // into the output projections' fp8 GEMMs as they are.
    ops::Fp8Heads q8 = ops::rms_norm_rope_fp8(joint(add_q_proj, to_q), head_dim_, norm_added_q->weight,
                                              norm_q->weight, text_len, rope.cos, rope.sin, norm_q->eps());
    ops::Fp8Heads k8 = ops::rms_norm_rope_fp8(joint(add_k_proj, to_k), head_dim_, norm_added_k->weight,
                                              norm_k->weight, text_len, rope.cos, rope.sin, norm_k->eps());
    ops::Fp8Heads v8 = ops::quantize_fp8_heads(joint(add_v_proj, to_v));
    const ops::Fp8Heads out = ops::fp8_attention(q8, k8, v8, head_dim_);
    q8 = k8 = v8 = ops::Fp8Heads();
    return {project(to_out_0, out, text_len, image_len, dtype), project(to_add_out, out, 0, text_len, dtype)};
  }
  at::Tensor q = joint(add_q_proj, to_q);
  ops::rms_norm_rope_(q, head_dim_, norm_added_q->weight, norm_q->weight, text_len, rope.cos, rope.sin,
                      norm_q->eps());
  at::Tensor k = joint(add_k_proj, to_k);
  ops::rms_norm_rope_(k, head_dim_, norm_added_k->weight, norm_k->weight, text_len, rope.cos, rope.sin,
                      norm_k->eps());
  at::Tensor out = nn::attention(split_heads(q), split_heads(k), split_heads(joint(add_v_proj, to_v)));
  q = k = at::Tensor();
  // out: [B, L+S, inner]. Each image's token range is one row-major matrix, which the projections read
  // in place (ops::per_image_linear makes a strided slice contiguous per image only when it is not).
  return {to_out_0->forward(out.narrow(1, text_len, image_len)), to_add_out->forward(out.narrow(1, 0, text_len))};
}

at::Tensor FluxAttentionImpl::forward_single(const nn::LinearInput& x, const nn::RopeTables& rope,
                                             at::ScalarType dtype) const {
  // x: [B, L+S, dim], the joint sequence.
  return attend_single(to_q->forward(x, dtype), to_k->forward(x, dtype), to_v->forward(x, dtype), rope);
}

at::Tensor FluxAttentionImpl::project(const nn::Linear& linear, const ops::Fp8Heads& out, int64_t start,
                                      int64_t length, at::ScalarType dtype) const {
  const int64_t images = out.data.size(0);
  ops::Fp8Rows rows{out.data.narrow(1, start, length), out.scale.view({images, 1}).expand({images, length})};
  if (linear->takes_fp8()) return linear->forward(rows, dtype);
  return linear->forward(ops::dequantize_fp8_rows(rows, dtype));
}

ops::Fp8Heads FluxAttentionImpl::attend_single_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const nn::RopeTables& rope) const {
  ops::Fp8Heads q8 =
      ops::rms_norm_rope_fp8(q, head_dim_, norm_q->weight, norm_q->weight, 0, rope.cos, rope.sin, norm_q->eps());
  ops::Fp8Heads k8 =
      ops::rms_norm_rope_fp8(k, head_dim_, norm_k->weight, norm_k->weight, 0, rope.cos, rope.sin, norm_k->eps());
  return ops::fp8_attention(q8, k8, ops::quantize_fp8_heads(v), head_dim_);
}

at::Tensor FluxAttentionImpl::attend_single(at::Tensor q, at::Tensor k, const at::Tensor& v,
                                            const nn::RopeTables& rope) const {
  if (fp8_attention_) return ops::dequantize_fp8_heads(attend_single_fp8(q, k, v, rope), v.scalar_type());
  // q, k, v: [B, L+S, inner], the joint sequence: one norm weight for every token.
  ops::rms_norm_rope_(q, head_dim_, norm_q->weight, norm_q->weight, 0, rope.cos, rope.sin, norm_q->eps());
  ops::rms_norm_rope_(k, head_dim_, norm_k->weight, norm_k->weight, 0, rope.cos, rope.sin, norm_k->eps());
  return nn::attention(split_heads(q), split_heads(k), split_heads(v));  // [B, S, inner]
}

}  // namespace fluxbatch::models::flux
