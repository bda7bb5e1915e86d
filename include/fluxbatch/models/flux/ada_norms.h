// Adaptive LayerNorms driven by the conditioning vector temb (diffusers normalization.py):
// modulation = Linear(SiLU(temb)), then LayerNorm(x, no affine, eps 1e-6) * (1 + scale) + shift.
#pragma once
#include "fluxbatch/nn/linear.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>

namespace fluxbatch::models::flux {

constexpr double kAdaNormEps = 1e-6;

// SiLU(temb), the input of every block's modulation Linear: made once per forward instead of once per block
// (57 SiLU passes and, under fp8 compute, 57 row quantizations fewer in FLUX.1-dev's forward; the same values).
struct Conditioning {
  at::Tensor silu;  // [B, dim]
  ops::Fp8Rows fp8;  // silu quantized per row (ops::quantize_fp8_rows); data undefined without fp8 modulations
  // temb: [B, dim]; fp8: also make the fp8 rows.
  static Conditioning of(const at::Tensor& temb, bool fp8);
  // What `linear` reads: the fp8 rows for an fp8 layer without LoRAs (their side paths read the dense input),
  // the dense SiLU otherwise; either way the product equals linear->forward(silu).
  nn::LinearInput input_of(const nn::Linear& linear) const;
};

// Modulated input plus the remaining chunks; every chunk is [B, dim].
struct AdaNormZeroOutput {
  nn::LinearInput x;  // [B, S, dim]: dense, or fp8 rows for layers that compute in fp8
  at::Tensor gate_msa, shift_mlp, scale_mlp, gate_mlp;
};

// AdaLayerNormZero: linear [6*dim, dim] -> (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
class AdaLayerNormZeroImpl : public torch::nn::Module {
 public:
  AdaLayerNormZeroImpl(int64_t dim, const at::TensorOptions& options);
  // x: [B, S, dim], temb: [B, dim]. fp8: the modulated x as fp8 rows (ops::modulated_layer_norm_fp8),
  // for attention projections that compute in fp8.
  AdaNormZeroOutput forward(const at::Tensor& x, const at::Tensor& temb, bool fp8 = false) const;
  AdaNormZeroOutput forward(const at::Tensor& x, const Conditioning& temb, bool fp8 = false) const;

  nn::Linear linear{nullptr};
};
TORCH_MODULE(AdaLayerNormZero);

// AdaLayerNormZeroSingle: linear [3*dim, dim] -> (shift, scale, gate).
class AdaLayerNormZeroSingleImpl : public torch::nn::Module {
 public:
  AdaLayerNormZeroSingleImpl(int64_t dim, const at::TensorOptions& options);
  // x: [B, S, dim], temb: [B, dim] -> {modulated x [B, S, dim] (fp8 rows with `fp8`), gate [B, dim]}
  std::pair<nn::LinearInput, at::Tensor> forward(const at::Tensor& x, const at::Tensor& temb, bool fp8 = false) const;
  std::pair<nn::LinearInput, at::Tensor> forward(const at::Tensor& x, const Conditioning& temb, bool fp8 = false) const;

  nn::Linear linear{nullptr};
};
TORCH_MODULE(AdaLayerNormZeroSingle);

// AdaLayerNormContinuous(elementwise_affine=False): linear [2*dim, cond_dim] -> (scale, shift). Note the
// order: BFL checkpoints store (shift, scale) and are swapped when converted.
class AdaLayerNormContinuousImpl : public torch::nn::Module {
 public:
  AdaLayerNormContinuousImpl(int64_t dim, int64_t conditioning_dim, const at::TensorOptions& options);
  // x: [B, S, dim], conditioning: [B, conditioning_dim] -> [B, S, dim]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& conditioning) const;

  nn::Linear linear{nullptr};
};
TORCH_MODULE(AdaLayerNormContinuous);

}  // namespace fluxbatch::models::flux
