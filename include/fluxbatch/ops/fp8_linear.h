// The fp8 GEMM of --compute fp8: activations quantized per row (each token multiplied by 448 / max|row|, its
// scale being max|row| / 448, and rounded to e4m3, so every token uses e4m3's whole range) times weights quantized per output channel
// (quant::Fp8Tensor), accumulated in fp32 and written in bf16. On CUDA (KernelMode::kFused) a row-wise
// scaled fp8 GEMM per image (at::_scaled_mm: fp8 tensor cores, Hopper and Ada); otherwise the reference:
// both operands dequantized to fp32, an fp32 GEMM, one rounding.
#pragma once
#include "fluxbatch/ops/fp8_heads.h"
#include "fluxbatch/quant/fp8_format.h"

#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

struct Fp8Rows {
  at::Tensor data;   // [..., K] float8_e4m3fn, contiguous
  at::Tensor scale;  // [...] float32: value = data * scale[..., None]
};

// x: [..., K] (bf16, fp16 or fp32; last dim contiguous) -> rows of x quantized as above (scale 1 for a
// row of zeros). On CUDA one kernel per call (read once, write a quarter / half as many bytes).
Fp8Rows quantize_fp8_rows(const at::Tensor& x);

// Rows joined from two tensors and quantized as one: [a | GELU_tanh(b)] along the last dim (GELU only with
// gelu_b, its output rounded to b's dtype as at::gelu's is), equal to quantize_fp8_rows(at::cat({a, b'}, -1))
// (on CUDA the GELU is computed another way, within a few fp32 ulps of at::gelu's, so a value rounds to the
// neighbouring b value once in thousands).
// a: [..., Ka] or undefined, b: [..., Kb], one dtype and leading shape -> rows [..., Ka + Kb]. On CUDA one
// kernel reads each source once, so the joined bf16 tensor and the GELU pass are never made (the single
// blocks' [attention | MLP] and the feed-forwards' hidden states).
Fp8Rows quantize_fp8_rows_joined(const at::Tensor& a, const at::Tensor& b, bool gelu_b);

// The same with a given in e4m3 with one scale per image (fp8 attention's output, ops/fp8_attention.h): a's
// values are dequantized to b's dtype first (dequantize_fp8_heads), so the rows equal
// quantize_fp8_rows_joined(dequantize_fp8_heads(a, b.scalar_type()), b, gelu_b); on CUDA in the same one kernel,
// reading a byte a value. a: [B, S, Ka], b: [B, S, Kb].
Fp8Rows quantize_fp8_rows_joined(const Fp8Heads& a, const at::Tensor& b, bool gelu_b);

// rows.data * rows.scale[..., None] in `dtype`.
at::Tensor dequantize_fp8_rows(const Fp8Rows& rows, at::ScalarType dtype);

// x: [B, ..., K] quantized rows, w: [N, K] -> [B, ..., N] in out_dtype (bf16 or fp32; the CUDA GEMM
// writes bf16), bias [N] (cast to out_dtype) or undefined. Image b's rows go through their own GEMM, so
// an image does not depend on its batch (as ops::per_image_linear).
at::Tensor fp8_linear(const Fp8Rows& x, const quant::Fp8Tensor& w, const at::Tensor& bias, at::ScalarType out_dtype);
// The same into `out` [B, ..., N] whose rows of one image form a contiguous matrix; with gelu_tanh, GELU
// (tanh) applied to the rounded output (as a separate at::gelu_ on `out` would, bit for bit, but in the
// contiguous product before it is copied into a column slice).
void fp8_linear_out(at::Tensor& out, const Fp8Rows& x, const quant::Fp8Tensor& w, const at::Tensor& bias,
                    bool gelu_tanh = false);

// Whether this device runs fp8 GEMMs (compute capability 8.9 or newer). False for the CPU.
bool fp8_gemm_supported(const c10::Device& device);

}  // namespace fluxbatch::ops
