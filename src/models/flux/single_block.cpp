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
  at::Tensor gate, joined;
  {
    // Scoped so that each large tensor goes as soon as the next one exists: attention first (its
    // temporaries are not stacked on the MLP states), the MLP states activated in place.
    auto [n, g] = norm->forward(h, temb);
    gate = g;
    const at::Tensor attn_out = attn->forward_single(n, rope);              // [B, L+S, dim]
    const at::Tensor mlp = nn::gelu_tanh_(proj_mlp->forward(n));            // [B, L+S, 4*dim]
    joined = at::cat({attn_out, mlp}, 2);                                   // [B, L+S, 5*dim]
  }
  at::Tensor out = proj_out->forward(joined);
  joined = at::Tensor();
  // h + gate * out, as the reference rounds it (products and sums commute exactly).
  out.mul_(gate.unsqueeze(1)).add_(h);
  if (out.scalar_type() == at::kHalf) out = out.clip(-65504.0, 65504.0);  // largest finite fp16
  return out;
}

}  // namespace fluxbatch::models::flux
