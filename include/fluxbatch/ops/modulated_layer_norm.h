// The adaptive LayerNorm of the FLUX blocks in one pass over memory:
//   LayerNorm(x) (no affine) * (1 + scale[:, None]) + shift[:, None]
// and the same preceded by the residual stream's gated update, which the double-stream block runs
// between attention and MLP. On CUDA (KernelMode::kFused) one kernel reads each input once, works in
// fp32 (two-pass mean / variance, the modulation's 1 + scale unrounded) and rounds each output once;
// everywhere else it is the reference's ATen composition, rounding after every op as diffusers does.
#pragma once
#include "fluxbatch/ops/fp8_linear.h"

#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// x: [B, S, C] (last dim contiguous; any stride over B and S, e.g. the image tokens of the joint
// sequence), shift, scale: [B, C] (any row stride, e.g. chunks of one modulation output)
// -> [B, S, C] contiguous, x's dtype.
at::Tensor modulated_layer_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);

// modulated_layer_norm quantized per row for an fp8 GEMM (ops/fp8_linear.h). On CUDA the same kernel
// quantizes the fp32 result (no pass of its own, no rounding to x's dtype first); elsewhere the reference
// result is quantized by ops::quantize_fp8_rows.
Fp8Rows modulated_layer_norm_fp8(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps);

// y <- x + gate[:, None] * y, in place (y becomes the new residual stream, rounded to its dtype), then
// returns modulated_layer_norm(y, shift, scale, eps). y: [B, S, C] contiguous, x: [B, S, C] (as above),
// gate, shift, scale: [B, C].
at::Tensor gated_residual_layer_norm_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate,
                                      const at::Tensor& shift, const at::Tensor& scale, double eps);

// gated_residual_layer_norm_ with the norm quantized per row for an fp8 GEMM, as modulated_layer_norm_fp8:
// on CUDA one kernel updates y and quantizes the fp32 norm; elsewhere the reference norm is quantized.
Fp8Rows gated_residual_layer_norm_fp8_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate,
                                       const at::Tensor& shift, const at::Tensor& scale, double eps);

}  // namespace fluxbatch::ops
