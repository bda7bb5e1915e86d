#include "fluxbatch/models/flux/single_block.h"

#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/gated_residual.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {

SingleBlockImpl::SingleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options)
    : norm(register_module("norm", AdaLayerNormZeroSingle(dim, options))),
      proj_mlp(register_module("proj_mlp", nn::Linear(dim, 4 * dim, true, options))),
      proj_out(register_module("proj_out", nn::Linear(dim + 4 * dim, dim, true, options))),
      attn(register_module("attn", FluxAttention(dim, heads, head_dim, AttentionKind::kSingle, 1e-6, options))) {}

at::Tensor SingleBlockImpl::forward(const at::Tensor& h, const at::Tensor& temb, const nn::RopeTables& rope) const {
  const int64_t dim = proj_mlp->in_features(), hidden = proj_mlp->out_features();
  at::Tensor gate, out;
  {
    auto [n, g] = norm->forward(h, temb, attn->takes_fp8() && proj_mlp->takes_fp8());
    gate = g;
    if (fp8_joined_rows()) {
      // fp8 compute: the output projection's input rows [attention | GELU(MLP)] are quantized straight from
      // the two products, the GELU on the way (one kernel), so neither the joined bf16 buffer nor the GELU
      // pass is made. Equal to the branch below, which quantizes the joined buffer.
      at::Tensor attention = attn->forward_single(n, rope, h.scalar_type());  // [B, L+S, dim]
      at::Tensor mlp = proj_mlp->forward(n, h.scalar_type());                  // [B, L+S, 4*dim], before GELU
      const ops::Fp8Rows rows = ops::quantize_fp8_rows_joined(attention, mlp, /*gelu_b=*/true);
      attention = mlp = at::Tensor();
      out = proj_out->forward(rows, h.scalar_type());
    } else {
      // The output projection reads [attention | GELU(MLP)] ([B, L+S, dim + 4*dim]): both halves are
      // written into one buffer (the MLP's GEMM and GELU straight into its columns) instead of being
      // concatenated. Attention first, so its temporaries are not stacked on the MLP states.
      at::Tensor joined = at::empty({h.size(0), h.size(1), dim + hidden}, h.options());
      joined.narrow(2, 0, dim).copy_(attn->forward_single(n, rope, h.scalar_type()));
      proj_mlp->forward_out(n, joined.narrow(2, dim, hidden), /*gelu_tanh=*/true);
      out = proj_out->forward(joined);
    }
  }
  ops::gated_residual_(out, h, gate);  // h + gate * out
  if (out.scalar_type() == at::kHalf) out = out.clip(-65504.0, 65504.0);  // largest finite fp16
  return out;
}

bool SingleBlockImpl::fp8_joined_rows() const {
  // Both GEMMs in fp8 (the MLP's GELU is then a separate pass, which the quantization takes over) and no
  // side path on the output projection, whose LoRAs read its dense input.
  return proj_mlp->takes_fp8() && proj_out->takes_fp8() && proj_out->loras().empty();
}

}  // namespace fluxbatch::models::flux
