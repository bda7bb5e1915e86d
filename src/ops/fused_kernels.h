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
// The same normalization and rotation written as e4m3 into data [B, S, H * D] (8-byte aligned rows) with one
// scale an image, scale[b] = sqrt(D) * max|w| / 448 over both weights (ops/qk_norm_rope.h); x is only read.
void rms_norm_rope_fp8_cuda(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text,
                            const at::Tensor& w_image, int64_t text_len, const at::Tensor& cos, const at::Tensor& sin,
                            double eps, at::Tensor& data, at::Tensor& scale);
// Per-image quantization (ops/fp8_heads.h): x [B, S, C] with unit last stride -> data [B, S, C] contiguous,
// scale [B].
void quantize_fp8_heads_cuda(const at::Tensor& x, at::Tensor& data, at::Tensor& scale);
// fp8 attention's per-image scalars for cuDNN into params [B, kFp8AttentionScalars, kFp8AttentionSlot] (one
// 16-byte slot each): descale q, k, v, descale s, scale s, scale o, amax s, amax o (the last two written by
// cuDNN); and the output's scale out_scale[b] = v_scale[b] * kFp8AttentionOutMargin (ops/fp8_attention.h).
constexpr int kFp8AttentionScalars = 8;
constexpr int kFp8AttentionSlot = 4;
void fp8_attention_scalars_cuda(const at::Tensor& q_scale, const at::Tensor& k_scale, const at::Tensor& v_scale,
                                at::Tensor& params, at::Tensor& out_scale);
// fp8 attention through cuDNN (ops/fp8_attention.h), one call an image: q, k, v [B, S, H * D] e4m3 (16-byte
// aligned rows), params from fp8_attention_scalars_cuda, out [B, Sq, H * D] contiguous. Throws
// std::runtime_error with cuDNN's message when cuDNN cannot run it.
void fp8_attention_cudnn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t head_dim,
                         const at::Tensor& params, at::Tensor& out);
// Whether cuDNN (as loaded) runs fp8 attention on `device_index`: version 9.1 or newer, not 9.10.0, and a
// compute capability of 9.0 or more.
bool fp8_attention_cudnn_available(int device_index);
// cuBLASLt GEMM with the bias + GELU epilogue into out's rows. False (nothing written) when cuBLASLt
// offers no algorithm for these shapes, strides and alignments.
bool linear_gelu_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);
// Rows [a | GELU?(b)]: a [R, Ka] and b [R, Kb] with unit last stride (rows may lie apart: column slices of a
// wider product), one dtype, either undefined (width 0) -> data [R, Ka + Kb] e4m3 and scale [R] fp32
// (ops/fp8_linear.h): one block per row.
void quantize_fp8_rows_cuda(const at::Tensor& a, const at::Tensor& b, bool gelu_b, at::Tensor& data,
                            at::Tensor& scale);
// The same with a given as e4m3 [R, Ka] (rows lda bytes apart) and one scale per image of `rows_per_image`
// rows (a_scale [R / rows_per_image]): each a value is widened to fp32, multiplied by its scale and rounded to
// b's dtype before joining (as dequantize_fp8_heads would). False (nothing written) unless the register form
// takes the shapes (Ka and Kb multiples of 8, 16-byte aligned rows, Ka + Kb at most 32K values).
bool quantize_fp8_rows_fp8a_cuda(const at::Tensor& a, const at::Tensor& a_scale, int64_t rows_per_image,
                                 const at::Tensor& b, bool gelu_b, at::Tensor& data, at::Tensor& scale);
#endif

}  // namespace fluxbatch::ops::detail
