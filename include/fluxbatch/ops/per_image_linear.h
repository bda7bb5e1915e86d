// y = x W^T + b computed image by image: x's first dimension is the batch of images, and each image's
// rows go through their own GEMM, written straight into its slice of the output. A GEMM library picks
// its kernel (tile shape, split-K) from the number of rows, and with it the order of the sums: one GEMM
// over B * S rows can round differently from one over S rows. Per image, an image's values do not
// depend on the batch it was rendered in (the same seed gives the same picture at any batch size, so
// an out-of-memory retry at a smaller batch changes nothing).
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// x: [B, ..., K] -> [B, ..., N] for a dense w [N, K]; bias [N] or undefined. Image b gives exactly
// at::linear(x[b:b+1], w, bias) (the fused addmm of a contiguous input; a strided input is made
// contiguous per image first, as at::linear's folding would not). A 1-D x is one image.
at::Tensor per_image_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

// The same into `out` [B, ..., N], whose rows of one image must form a matrix with unit column stride
// (a contiguous buffer, a token range of a joint sequence, or a column slice of a wider buffer such as
// the single block's [attention | MLP] input). gelu_tanh: out = GELU_tanh(x W^T + b) through
// ops::linear_gelu_tanh_out (the fused epilogue on CUDA).
void per_image_linear_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                          bool gelu_tanh = false);

}  // namespace fluxbatch::ops
