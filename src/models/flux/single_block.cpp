#include "fluxbatch/models/flux/single_block.h"

#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/gated_residual.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace fluxbatch::models::flux {
namespace {

// Whether `parts` lie back to back in one storage, in order, each contiguous, one dtype: then one view covers
// them all (joined_view).
bool back_to_back(const std::vector<at::Tensor>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    const at::Tensor& t = parts[i];
    if (!t.defined() || !t.is_contiguous() || t.scalar_type() != parts[0].scalar_type() ||
        !t.storage().is_alias_of(parts[0].storage())) {
      return false;
    }
    if (i > 0 && static_cast<const char*>(parts[i - 1].data_ptr()) + parts[i - 1].nbytes() !=
                     static_cast<const char*>(t.data_ptr())) {
      return false;
    }
  }
  return true;
}

// The view over back_to_back `parts` stacked along dim 0.
at::Tensor joined_view(const std::vector<at::Tensor>& parts) {
  std::vector<int64_t> sizes = parts[0].sizes().vec();
  for (size_t i = 1; i < parts.size(); ++i) sizes[0] += parts[i].size(0);
  return parts[0].as_strided(sizes, parts[0].strides());
}

}  // namespace

SingleBlockImpl::SingleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options)
    : norm(register_module("norm", AdaLayerNormZeroSingle(dim, options))),
      proj_mlp(register_module("proj_mlp", nn::Linear(dim, 4 * dim, true, options))),
      proj_out(register_module("proj_out", nn::Linear(dim + 4 * dim, dim, true, options))),
      attn(register_module("attn", FluxAttention(dim, heads, head_dim, AttentionKind::kSingle, 1e-6, options))) {}

at::Tensor SingleBlockImpl::forward(const at::Tensor& h, const at::Tensor& temb, const nn::RopeTables& rope) const {
  return forward(h, Conditioning::of(temb, norm->linear->takes_fp8()), rope);
}

at::Tensor SingleBlockImpl::forward(const at::Tensor& h, const Conditioning& temb, const nn::RopeTables& rope) const {
  const int64_t dim = proj_mlp->in_features(), hidden = proj_mlp->out_features();
  at::Tensor gate, out;
  {
    auto [n, g] = norm->forward(h, temb, attn->takes_fp8() && proj_mlp->takes_fp8());
    gate = g;
    if (fp8_joined_rows()) {
      // fp8 compute: the output projection's input rows [attention | GELU(MLP)] are quantized straight from
      // the two products, the GELU on the way (one kernel), so neither the joined bf16 buffer nor the GELU
      // pass is made. Equal to the branch below, which quantizes the joined buffer.
      at::Tensor attention, mlp;  // [B, L+S, dim], [B, L+S, 4*dim] before GELU
      ops::Fp8Heads attention8;   // --attention fp8: the attention's e4m3 output instead, read as it is
      auto attend = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        if (attn->fp8_attention()) {
          attention8 = attn->attend_single_fp8(q, k, v, rope);
        } else {
          attention = attn->attend_single(q, k, v, rope);
        }
      };
      const std::optional<JoinedProjection> joined = n.is_fp8() ? joined_projection() : std::nullopt;
      if (joined) {
        // q, k, v (and the MLP's first product) from one GEMM ([B, L+S, 3 * dim (+ 4 * dim)]), read in place
        // as column slices: the same per-column fp32 sums and bf16 roundings as the separate GEMMs.
        at::Tensor product = ops::fp8_linear(n.fp8, joined->weight, joined->bias, h.scalar_type());
        attend(product.narrow(2, 0, dim), product.narrow(2, dim, dim), product.narrow(2, 2 * dim, dim));
        if (joined->with_mlp) {
          mlp = product.narrow(2, 3 * dim, hidden);
        } else {
          product = at::Tensor();  // q, k and v go before the MLP's product comes
          mlp = proj_mlp->forward(n, h.scalar_type());
        }
      } else {
        attend(attn->to_q->forward(n, h.scalar_type()), attn->to_k->forward(n, h.scalar_type()),
               attn->to_v->forward(n, h.scalar_type()));
        mlp = proj_mlp->forward(n, h.scalar_type());
      }
      const ops::Fp8Rows rows = attention8.data.defined()
                                    ? ops::quantize_fp8_rows_joined(attention8, mlp, /*gelu_b=*/true)
                                    : ops::quantize_fp8_rows_joined(attention, mlp, /*gelu_b=*/true);
      attention8 = ops::Fp8Heads();
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

std::vector<nn::Linear> SingleBlockImpl::projections(bool with_mlp) const {
  std::vector<nn::Linear> out{attn->to_q, attn->to_k, attn->to_v};
  if (with_mlp) out.push_back(proj_mlp);
  return out;
}

bool SingleBlockImpl::join_fp8_projections(bool with_mlp) {
  const std::vector<nn::Linear> parts = projections(with_mlp);
  for (const nn::Linear& l : parts) {
    if (!l->is_fp8() || !l->bias.defined() || l->fp8().data.device() != parts[0]->fp8().data.device() ||
        l->bias.device() != parts[0]->fp8().data.device()) {
      return false;
    }
  }
  if (const auto joined = joined_projection(/*allow_loras=*/true); joined && joined->with_mlp == with_mlp) return true;
  std::vector<at::Tensor> data, scale, bias;
  for (const nn::Linear& l : parts) {
    data.push_back(l->fp8().data);
    scale.push_back(l->fp8().scale);
    bias.push_back(l->bias);
  }
  if (!with_mlp && proj_mlp->is_fp8() && proj_mlp->fp8().data.storage().is_alias_of(attn->to_q->fp8().data.storage())) {
    proj_mlp->own_fp8_storage();  // leaving a joined layout with the MLP: the old block storage goes
  }
  // The layers' weights are held twice until the old copies go (about 66 MB a block at FLUX.1-dev's size).
  const at::Tensor joined_data = at::cat(data, 0), joined_scale = at::cat(scale, 0), joined_bias = at::cat(bias, 0);
  data.clear();
  scale.clear();
  int64_t row = 0;
  for (nn::Linear l : parts) {  // a handle copy: the module itself is changed
    const int64_t n = l->out_features();
    l->set_fp8({joined_data.narrow(0, row, n), joined_scale.narrow(0, row, n)}, "joined fp8 projection");
    // The registered "bias" parameter itself now views the joined bias (named_parameters() still lists it), as
    // nn::PinnedWeights repoints tensors.
    l->bias.set_data(joined_bias.narrow(0, row, n));
    row += n;
  }
  return true;
}

std::optional<SingleBlockImpl::JoinedProjection> SingleBlockImpl::joined_projection(bool allow_loras) const {
  for (const bool with_mlp : {true, false}) {
    std::vector<at::Tensor> data, scale, bias;
    bool usable = true;
    for (const nn::Linear& l : projections(with_mlp)) {
      usable = usable && l->is_fp8() && (allow_loras || l->loras().empty()) && l->bias.defined();
      if (!usable) break;
      data.push_back(l->fp8().data);
      scale.push_back(l->fp8().scale);
      bias.push_back(l->bias);
    }
    if (usable && back_to_back(data) && back_to_back(scale) && back_to_back(bias)) {
      return JoinedProjection{quant::Fp8Tensor{joined_view(data), joined_view(scale)}, joined_view(bias), with_mlp};
    }
  }
  return std::nullopt;
}

bool SingleBlockImpl::fp8_projections_joined() const { return joined_projection().has_value(); }

bool SingleBlockImpl::joined_projection_with_mlp() const {
  const std::optional<JoinedProjection> joined = joined_projection();
  return joined && joined->with_mlp;
}

}  // namespace fluxbatch::models::flux
