// FluxSingleTransformerBlock: one stream over the joint sequence (text tokens first), attention and
// MLP in parallel from the same modulated input, fused into one output projection.
#pragma once
#include "fluxbatch/models/flux/ada_norms.h"
#include "fluxbatch/models/flux/attention.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/rope.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace fluxbatch::models::flux {

class SingleBlockImpl : public torch::nn::Module {
 public:
  SingleBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, const at::TensorOptions& options);
  // h: [B, L+S, dim] (diffusers' cat([context, x], 1)), temb: [B, dim] -> [B, L+S, dim].
  // diffusers splits and re-concatenates the streams around every block; the values are the same.
  at::Tensor forward(const at::Tensor& h, const at::Tensor& temb, const nn::RopeTables& rope) const;
  // The same with SiLU(temb) made once for all blocks (Conditioning::of).
  at::Tensor forward(const at::Tensor& h, const Conditioning& temb, const nn::RopeTables& rope) const;

  // fp8 compute: lays the fp8 weights, scales and biases of attn.to_q, to_k, to_v (and, with_mlp, proj_mlp) out
  // back to back, each layer keeping its own view, so that forward() runs their products as one GEMM
  // ([3 * inner (+ 4 * dim), dim]): fewer launches, and no partial last wave on the small ones. Returns false
  // (and changes nothing) unless all of them hold fp8 weights and biases on one device. Values are unchanged.
  // Anything that later moves one of those tensors on its own (offload, streaming) breaks the layout, and
  // forward() then takes the separate GEMMs again. Without the MLP, q, k and v lie in cuDNN's packed QKV layout
  // (rows 3 * inner apart) and the block's peak stays that of the separate GEMMs; with it, one launch fewer and
  // the MLP's product is held beside q, k and v (about 80 MB more a 1024x1024 image).
  bool join_fp8_projections(bool with_mlp = true);
  // Whether forward() runs a joined GEMM now (the layout above holds and no joined layer has a LoRA).
  bool fp8_projections_joined() const;
  // Whether that joined GEMM includes the MLP's product.
  bool joined_projection_with_mlp() const;

  AdaLayerNormZeroSingle norm{nullptr};
  nn::Linear proj_mlp{nullptr};  // [4*dim, dim]
  nn::Linear proj_out{nullptr};  // [dim, dim + 4*dim]
  FluxAttention attn{nullptr};

 private:
  // Whether the output projection's fp8 input rows are made from the attention and MLP products directly.
  bool fp8_joined_rows() const;
  // The joined weight ([3 * inner + 4 * dim, dim]) and bias over the layout join_fp8_projections() makes, when
  // fp8_projections_joined().
  struct JoinedProjection {
    quant::Fp8Tensor weight;
    at::Tensor bias;
    bool with_mlp;  // proj_mlp's rows follow q, k, v's
  };
  // allow_loras: the layout alone, whether or not forward() may use it.
  std::optional<JoinedProjection> joined_projection(bool allow_loras = false) const;
  // attn.to_q, to_k, to_v (and proj_mlp): the layers whose products one GEMM can make (same input).
  std::vector<nn::Linear> projections(bool with_mlp) const;
};
TORCH_MODULE(SingleBlock);

}  // namespace fluxbatch::models::flux
