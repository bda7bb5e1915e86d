// Device implementations behind ops/nf4_dequantize.h and ops/nf4_linear.h. The public functions check
// their arguments and dispatch here; these assume checked, contiguous inputs on one device.
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>

namespace fluxbatch::ops::detail {

// CPU reference (src/ops/nf4_dequantize_cpu.cpp).
void nf4_dequantize_cpu(const quant::Nf4Tensor& w, at::Tensor& out);

#ifdef FLUXBATCH_WITH_CUDA
// src/ops/nf4_dequantize_cuda.cu; out: bf16 / f16 / f32.
void nf4_dequantize_cuda(const quant::Nf4Tensor& w, at::Tensor& out);
// Whether nf4_gemv_cuda takes these arguments (a single row of x.dtype == w.dtype in bf16 / f16 /
// f32, K a multiple of 32, 16-byte aligned rows); otherwise the caller dequantizes and runs a GEMM.
bool nf4_gemv_cuda_supports(const at::Tensor& x, const quant::Nf4Tensor& w);
// src/ops/nf4_linear_cuda.cu: out[n] = x . w[n] + bias[n], fp32 accumulation. x: [K], out: [N].
void nf4_gemv_cuda(const at::Tensor& x, const quant::Nf4Tensor& w, const at::Tensor& bias, at::Tensor& out);
#endif

}  // namespace fluxbatch::ops::detail
