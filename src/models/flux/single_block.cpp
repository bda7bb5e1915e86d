#include "fluxbatch/models/flux/single_block.h"

#include "fluxbatch/nn/activations.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {

SingleBlockImpl::SingleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options)
    : norm(register_module("norm", AdaLayerNormZeroSingle(dim, options))),
      proj_mlp(register_module("proj_mlp", nn::Linear(dim, 4 * dim, true, options))),
      proj_out(register_module("proj_out", nn::Linear(dim + 4 * dim, dim, true, options))),
      attn(register_module("attn", FluxAttention(dim, heads, head_dim, AttentionKind::kSingle, 1e-6, options))) {}

at::Tensor SingleBlockImpl::forward(const at::Tensor& h, const at::Tensor& temb, const nn::RopeTables& rope) const {
  const auto [n, gate] = norm->forward(h, temb);
  const at::Tensor mlp = nn::gelu_tanh(proj_mlp->forward(n));      // [B, L+S, 4*dim]
  const at::Tensor attn_out = attn->forward_single(n, rope);       // [B, L+S, dim]
  at::Tensor out = h + gate.unsqueeze(1) * proj_out->forward(at::cat({attn_out, mlp}, 2));
  if (out.scalar_type() == at::kHalf) out = out.clip(-65504.0, 65504.0);  // largest finite fp16
  return out;
}

}  // namespace fluxbatch::models::flux
