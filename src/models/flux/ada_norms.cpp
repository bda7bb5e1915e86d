#include "fluxbatch/models/flux/ada_norms.h"

#include "fluxbatch/nn/activations.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/modulated_layer_norm.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {
namespace {

// LayerNorm(x) * (1 + scale[:, None]) + shift[:, None]: one fused kernel on CUDA, the reference's op
// order (each op rounded to x's dtype) on the CPU and in the reference kernel mode.
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return ops::modulated_layer_norm(x, shift, scale, kAdaNormEps);
}

nn::LinearInput modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, bool fp8) {
  if (fp8) return {at::Tensor(), ops::modulated_layer_norm_fp8(x, shift, scale, kAdaNormEps)};
  return {modulate(x, shift, scale), {}};
}

}  // namespace

Conditioning Conditioning::of(const at::Tensor& temb, bool fp8) {
  Conditioning c;
  c.silu = nn::silu(temb);
  if (fp8) c.fp8 = ops::quantize_fp8_rows(c.silu);
  return c;
}

nn::LinearInput Conditioning::input_of(const nn::Linear& linear) const {
  if (fp8.data.defined() && linear->takes_fp8() && linear->loras().empty()) return {at::Tensor(), fp8};
  return {silu, {}};
}

AdaLayerNormZeroImpl::AdaLayerNormZeroImpl(int64_t dim, const at::TensorOptions& options)
    : linear(register_module("linear", nn::Linear(dim, 6 * dim, true, options))) {}

AdaNormZeroOutput AdaLayerNormZeroImpl::forward(const at::Tensor& x, const at::Tensor& temb, bool fp8) const {
  return forward(x, Conditioning::of(temb, linear->takes_fp8()), fp8);
}

AdaNormZeroOutput AdaLayerNormZeroImpl::forward(const at::Tensor& x, const Conditioning& temb, bool fp8) const {
  const auto e = linear->forward(temb.input_of(linear), temb.silu.scalar_type()).chunk(6, 1);  // 6 x [B, dim]
  return {modulate(x, e[0], e[1], fp8), e[2], e[3], e[4], e[5]};
}

AdaLayerNormZeroSingleImpl::AdaLayerNormZeroSingleImpl(int64_t dim, const at::TensorOptions& options)
    : linear(register_module("linear", nn::Linear(dim, 3 * dim, true, options))) {}

std::pair<nn::LinearInput, at::Tensor> AdaLayerNormZeroSingleImpl::forward(const at::Tensor& x, const at::Tensor& temb,
                                                                           bool fp8) const {
  return forward(x, Conditioning::of(temb, linear->takes_fp8()), fp8);
}

std::pair<nn::LinearInput, at::Tensor> AdaLayerNormZeroSingleImpl::forward(const at::Tensor& x,
                                                                           const Conditioning& temb, bool fp8) const {
  const auto e = linear->forward(temb.input_of(linear), temb.silu.scalar_type()).chunk(3, 1);  // shift, scale, gate
  return {modulate(x, e[0], e[1], fp8), e[2]};
}

AdaLayerNormContinuousImpl::AdaLayerNormContinuousImpl(int64_t dim, int64_t conditioning_dim,
                                                       const at::TensorOptions& options)
    : linear(register_module("linear", nn::Linear(conditioning_dim, 2 * dim, true, options))) {}

at::Tensor AdaLayerNormContinuousImpl::forward(const at::Tensor& x, const at::Tensor& conditioning) const {
  const auto e = linear->forward(nn::silu(conditioning).to(x.scalar_type())).chunk(2, 1);  // scale, shift
  return modulate(x, e[1], e[0]);
}

}  // namespace fluxbatch::models::flux
