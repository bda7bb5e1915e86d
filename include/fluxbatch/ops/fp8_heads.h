// Attention operands in e4m3 with one scale per image (cuDNN's fp8 attention takes one scale per tensor;
// one per image keeps an image independent of its batch), and their quantization.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace fluxbatch::ops {

struct Fp8Heads {
  at::Tensor data;   // [B, S, C] float8_e4m3fn, unit last stride (token rows may lie apart: column slices)
  at::Tensor scale;  // [B] float32 on data's device: value = data * scale[b]
};

// x: [B, S, C] (bf16, fp16 or fp32; unit last stride) -> data [B, S, C] contiguous, scale[b] = max|x[b]| / 448
// (1 for an image of zeros), each value multiplied by 448 / max|x[b]| and rounded to e4m3 (the fp8 rows'
// arithmetic, ops/fp8_linear.h, over a whole image). On CUDA two passes: the absmax, then the bytes.
Fp8Heads quantize_fp8_heads(const at::Tensor& x);

// data * scale[b] in `dtype` (computed in fp32, rounded once).
at::Tensor dequantize_fp8_heads(const Fp8Heads& x, at::ScalarType dtype);

}  // namespace fluxbatch::ops
