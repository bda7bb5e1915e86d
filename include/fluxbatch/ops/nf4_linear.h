// y = x W^T + b with W held as NF4 (bitsandbytes Linear4bit.forward). The dense weight only ever
// exists in a caller-owned scratch buffer, shared by all layers and reused from call to call.
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// x: [..., K] -> [..., N] in x's dtype, for w of shape [N, K]; bias [N] or undefined (cast to x's
// dtype, like bnb). W = dequantize(w) in w.dtype, then cast to x's dtype when that differs (bnb's
// `dequantize_4bit(W).to(A.dtype)`).
//   several rows: W is dequantized into *scratch (grown when too small, never shrunk; a temporary when
//                 scratch is null) and at::linear runs the GEMM.
//   one row, CUDA: a fused kernel dequantizes and multiplies in one pass (fp32 accumulation, same
//                 rounded weights as the GEMM path), never materialising W; scratch is untouched.
//   CPU:          always the dequantize + at::linear reference.
at::Tensor nf4_linear(const at::Tensor& x, const quant::Nf4Tensor& w, const at::Tensor& bias, at::Tensor* scratch);

// The dense weight [N, K] of `dtype` as nf4_linear's GEMM path computes it: dequantized in w.dtype into
// *scratch (as above), then cast when dtype differs. Valid until the scratch is next used.
at::Tensor nf4_dense_weight(const quant::Nf4Tensor& w, at::ScalarType dtype, at::Tensor* scratch);

}  // namespace fluxbatch::ops
