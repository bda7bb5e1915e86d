// The reference fp8 quantization shared by the fp8 ops (rows: ops/fp8_linear.h; heads: ops/fp8_heads.h), in
// ATen ops whose divisions are IEEE on every device (tensor / tensor), as the CUDA kernels compute it.
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

namespace fluxbatch::ops::detail {

// absmax: the largest magnitude of each group (fp32) -> {scale = absmax / 448, inverse = 448 / absmax}, both 1
// for a group of zeros (or of values so small that 448 / absmax overflows).
std::pair<at::Tensor, at::Tensor> fp8_scale_and_inverse(const at::Tensor& absmax);

// wide (fp32) * inverse (broadcast over wide), clamped to e4m3's range (a maximum can land a hair above 448)
// and rounded to e4m3 (nearest even), contiguous.
at::Tensor fp8_round(const at::Tensor& wide, const at::Tensor& inverse);

}  // namespace fluxbatch::ops::detail
