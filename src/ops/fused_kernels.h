// Device implementations behind the fused FLUX ops (modulated_layer_norm.h, gated_residual.h,
// qk_norm_rope.h, linear_gelu.h). The public functions check their arguments and choose between these
// and the reference composition; these assume checked inputs on one CUDA device.
#pragma once
#include "fluxbatch/ops/fp8_linear.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fluxbatch::ops::detail {

#ifdef FLUXBATCH_WITH_CUDA
// out = LN(r) * (1 + scale) + shift per row, where r = x, or (residual given) r = x + gate * residual,
// written back into *residual first. x / residual rows: [B, S, C] with unit last stride; gate, shift,
// scale: [B, C] with unit last stride; out: [B, S, C] contiguous, or (out_fp8 given instead) e4m3 rows
// [B, S, C] with their scales [B, S] (ops/fp8_linear.h).
void modulated_layer_norm_cuda(const at::Tensor& x, at::Tensor* residual, const at::Tensor& gate,
                               const at::Tensor& shift, const at::Tensor& scale, double eps, at::Tensor* out,
                               ops::Fp8Rows* out_fp8);
// y = x + gate * y. y contiguous [B, S, C]; x [B, S, C] with unit last stride; gate [B, C].
void gated_residual_cuda(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate);
// Head sizes the fused RMSNorm + RoPE kernel takes (a multiple of 8 dividing 256: 8 ... 256).
bool rms_norm_rope_cuda_supports(int64_t head_dim);
void rms_norm_rope_cuda(at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
                        int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps);
// cuBLASLt GEMM with the bias + GELU epilogue into out's rows. False (nothing written) when cuBLASLt
// offers no algorithm for these shapes, strides and alignments.
bool linear_gelu_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);
// Rows [a | GELU?(b)]: a [R, Ka] and b [R, Kb] with unit last stride (rows may lie apart: column slices of a
// wider product), one dtype, either undefined (width 0) -> data [R, Ka + Kb] e4m3 and scale [R] fp32
// (ops/fp8_linear.h): one block per row.
void quantize_fp8_rows_cuda(const at::Tensor& a, const at::Tensor& b, bool gelu_b, at::Tensor& data,
                            at::Tensor& scale);
#endif

}  // namespace fluxbatch::ops::detail
