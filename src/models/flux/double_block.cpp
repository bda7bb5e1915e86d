#include "fluxbatch/models/flux/double_block.h"

#include "fluxbatch/nn/norms.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {
namespace {

// Largest finite fp16: the reference clips the text stream after each block when running in fp16.
constexpr double kFp16Max = 65504.0;

// Residual MLP half of a stream: x + gate * ff(LayerNorm(x) * (1 + scale) + shift).
at::Tensor mlp_residual(const at::Tensor& x, const FeedForward& ff, const at::Tensor& shift, const at::Tensor& scale,
                        const at::Tensor& gate) {
  // In place where the reference makes new tensors (same roundings; products and sums commute
  // exactly): a C++ expression would keep every temporary of the image stream alive until its end.
  at::Tensor n = nn::layer_norm(x, kAdaNormEps);
  n.mul_(1 + scale.unsqueeze(1)).add_(shift.unsqueeze(1));
  at::Tensor out = ff->forward(n);  // [B, S, dim]
  n = at::Tensor();
  return out.mul_(gate.unsqueeze(1)).add_(x);
}

}  // namespace

DoubleBlockImpl::DoubleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options)
    : norm1(register_module("norm1", AdaLayerNormZero(dim, options))),
      norm1_context(register_module("norm1_context", AdaLayerNormZero(dim, options))),
      attn(register_module("attn", FluxAttention(dim, heads, head_dim, AttentionKind::kJoint, 1e-6, options))),
      ff(register_module("ff", FeedForward(dim, dim, 4 * dim, options))),
      ff_context(register_module("ff_context", FeedForward(dim, dim, 4 * dim, options))) {}

StreamPair DoubleBlockImpl::forward(const at::Tensor& x, const at::Tensor& context, const at::Tensor& temb,
                                    const nn::RopeTables& rope) const {
  const AdaNormZeroOutput img = norm1->forward(x, temb);
  const AdaNormZeroOutput txt = norm1_context->forward(context, temb);
  const auto [img_attn, txt_attn] = attn->forward_joint(img.x, txt.x, rope);

  at::Tensor x_out = x + img.gate_msa.unsqueeze(1) * img_attn;
  x_out = mlp_residual(x_out, ff, img.shift_mlp, img.scale_mlp, img.gate_mlp);

  at::Tensor context_out = context + txt.gate_msa.unsqueeze(1) * txt_attn;
  context_out = mlp_residual(context_out, ff_context, txt.shift_mlp, txt.scale_mlp, txt.gate_mlp);
  // Only the text stream is clipped here (diffusers FluxTransformerBlock); the image stream is not.
  if (context_out.scalar_type() == at::kHalf) context_out = context_out.clip(-kFp16Max, kFp16Max);
  return {x_out, context_out};
}

}  // namespace fluxbatch::models::flux
