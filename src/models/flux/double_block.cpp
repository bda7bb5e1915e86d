#include "fluxbatch/models/flux/double_block.h"

#include "fluxbatch/ops/gated_residual.h"
#include "fluxbatch/ops/modulated_layer_norm.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {
namespace {

// Largest finite fp16: the reference clips the text stream after each block when running in fp16.
constexpr double kFp16Max = 65504.0;

// One stream's half after attention, in place on the attention output `attn` (which becomes the
// stream's new state): x + gate_msa * attn, then x + gate_mlp * ff(LayerNorm(x) * (1 + scale) + shift).
// The residual update and the LayerNorm are one kernel on CUDA (ops::gated_residual_layer_norm_), which
// under fp8 compute also quantizes the norm for the feed-forward's first GEMM (no bf16 norm, no pass of its
// own); the feed-forward's GELU rides in its first GEMM, and the last residual update is one more pass.
at::Tensor finish_stream(at::Tensor attn, const at::Tensor& x, const AdaNormZeroOutput& mod, const FeedForward& ff) {
  at::Tensor out;
  if (ff->takes_fp8_rows()) {
    const ops::Fp8Rows rows =
        ops::gated_residual_layer_norm_fp8_(attn, x, mod.gate_msa, mod.shift_mlp, mod.scale_mlp, kAdaNormEps);
    out = ff->forward(rows, x.scalar_type());  // [B, S, dim]
  } else {
    const at::Tensor n =
        ops::gated_residual_layer_norm_(attn, x, mod.gate_msa, mod.shift_mlp, mod.scale_mlp, kAdaNormEps);
    out = ff->forward(n);  // [B, S, dim]
  }
  ops::gated_residual_(out, attn, mod.gate_mlp);
  return out;
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
  return forward(x, context, Conditioning::of(temb, norm1->linear->takes_fp8()), rope);
}

StreamPair DoubleBlockImpl::forward(const at::Tensor& x, const at::Tensor& context, const Conditioning& temb,
                                    const nn::RopeTables& rope) const {
  const bool fp8 = attn->takes_fp8();
  const AdaNormZeroOutput img = norm1->forward(x, temb, fp8);
  const AdaNormZeroOutput txt = norm1_context->forward(context, temb, fp8);
  auto [img_attn, txt_attn] = attn->forward_joint(img.x, txt.x, rope, x.scalar_type());
  at::Tensor x_out = finish_stream(std::move(img_attn), x, img, ff);
  at::Tensor context_out = finish_stream(std::move(txt_attn), context, txt, ff_context);
  // Only the text stream is clipped here (diffusers FluxTransformerBlock); the image stream is not.
  if (context_out.scalar_type() == at::kHalf) context_out = context_out.clip(-kFp16Max, kFp16Max);
  return {x_out, context_out};
}

}  // namespace fluxbatch::models::flux
