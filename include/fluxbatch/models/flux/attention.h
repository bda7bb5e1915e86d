// FluxAttention with FluxAttnProcessor: per-stream Q/K/V projections, RMSNorm on each head's q and k,
// RoPE, one SDPA over the joint sequence (text tokens first), output projections.
#pragma once
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/norms.h"
#include "fluxbatch/nn/rope.h"
#include "fluxbatch/ops/fp8_heads.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>

namespace fluxbatch::models::flux {

// Variant of the attention block.
enum class AttentionKind {
  kJoint,   // double-stream block: image stream (to_q...) + text stream (add_q_proj...), with output projections
  kSingle,  // single-stream block: one stream, no output projection (pre_only)
};

class FluxAttentionImpl : public torch::nn::Module {
 public:
  FluxAttentionImpl(int64_t dim, int64_t heads, int64_t head_dim, AttentionKind kind, double eps,
                    const at::TensorOptions& options);

  // Joint: x: [B, S, dim] (image), context: [B, L, dim] (text), rope over L + S tokens
  // -> {image out [B, S, dim], text out [B, L, dim]}.
  // Inputs dense or as fp8 rows (takes_fp8()); outputs in `dtype` (the model's).
  std::pair<at::Tensor, at::Tensor> forward_joint(const nn::LinearInput& x, const nn::LinearInput& context,
                                                  const nn::RopeTables& rope, at::ScalarType dtype) const;
  // Single: x: [B, S, dim] -> [B, S, heads * head_dim] (no output projection).
  at::Tensor forward_single(const nn::LinearInput& x, const nn::RopeTables& rope, at::ScalarType dtype) const;
  // Single, from projections made elsewhere: q, k, v [B, S, heads * head_dim] (unit last stride; rows may lie
  // apart, e.g. column slices of one joined product). q and k are normalized and rotated in place.
  at::Tensor attend_single(at::Tensor q, at::Tensor k, const at::Tensor& v, const nn::RopeTables& rope) const;
  // The same attention over fp8 operands (ops::fp8_attention): q and k normalized and rotated into e4m3, v
  // quantized per image; -> the output in e4m3 with one scale per image, [B, S, heads * head_dim].
  ops::Fp8Heads attend_single_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const nn::RopeTables& rope) const;
  // --attention fp8 (FluxTransformer2DModelImpl::set_fp8_attention): forward_joint, forward_single and
  // attend_single run their attention through ops::fp8_attention.
  void set_fp8_attention(bool on) { fp8_attention_ = on; }
  bool fp8_attention() const { return fp8_attention_; }
  // Whether the q/k/v projections compute in fp8, so their input may come as fp8 rows.
  bool takes_fp8() const { return to_q->takes_fp8(); }

  int64_t head_dim() const { return head_dim_; }

  nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};  // [inner, dim]
  nn::RMSNorm norm_q{nullptr}, norm_k{nullptr};             // [head_dim]
  // kJoint only:
  nn::Linear add_q_proj{nullptr}, add_k_proj{nullptr}, add_v_proj{nullptr};  // [inner, dim]
  nn::RMSNorm norm_added_q{nullptr}, norm_added_k{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // to_out.0: Linear [dim, inner] (diffusers' index 1 is a no-op Dropout)
  nn::Linear to_out_0{nullptr};
  nn::Linear to_add_out{nullptr};  // [dim, inner]

 private:
  // [B, S, inner] -> [B, S, heads, head_dim]
  at::Tensor split_heads(const at::Tensor& x) const { return x.unflatten(-1, {-1, head_dim_}); }

  // The output projection of fp8 attention's output (tokens [start, start + length) of out, [B, L+S, inner]):
  // its e4m3 rows straight into an fp8 GEMM (the image's scale for each row), dequantized for a layer without fp8
  // compute. -> [B, length, dim] in dtype.
  at::Tensor project(const nn::Linear& linear, const ops::Fp8Heads& out, int64_t start, int64_t length,
                     at::ScalarType dtype) const;

  int64_t head_dim_;
  AttentionKind kind_;
  bool fp8_attention_ = false;
};
TORCH_MODULE(FluxAttention);

}  // namespace fluxbatch::models::flux
