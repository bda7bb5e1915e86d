// NF4 -> dense, on the weights' device (CPU reference or CUDA kernel). Values are bit-identical to
// bitsandbytes' dequantize_4bit on either device: dtype(code * absmax), fp32 product, one rounding.
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace fluxbatch::ops {

// w -> [w.shape] of `dtype` (float32, float16 or bfloat16) on w's device.
at::Tensor nf4_dequantize(const quant::Nf4Tensor& w, c10::ScalarType dtype);
// w -> [w.shape] of w.dtype.
at::Tensor nf4_dequantize(const quant::Nf4Tensor& w);
// Into a caller's buffer (e.g. a reused scratch): `out` on w's device, contiguous, out.numel() ==
// w.numel() (any shape), dtype float32, float16 or bfloat16.
void nf4_dequantize(const quant::Nf4Tensor& w, at::Tensor& out);

}  // namespace fluxbatch::ops
