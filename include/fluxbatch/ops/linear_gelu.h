// out = GELU_tanh(x W^T + b) into a caller's matrix: the feed-forward's first projection, and the single
// block's MLP projection written straight into its slice of the buffer the output projection reads (no
// concatenation). On CUDA (KernelMode::kFused) one cuBLASLt GEMM with the bias + GELU epilogue (applied
// to the fp32 accumulator, rounded once); otherwise the reference: addmm (bias in the GEMM), rounded,
// then GELU(tanh), rounded again.
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// out: [M, N] with unit column stride and any row stride >= N (e.g. a column slice of a wider matrix);
// x: [M, K] contiguous; w: [N, K] contiguous; bias: [N] or undefined. All one dtype, one device.
void linear_gelu_tanh_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

}  // namespace fluxbatch::ops
