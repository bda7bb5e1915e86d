// The end of each FLUX sub-block: y <- x + gate[:, None] * y, in place. On CUDA (KernelMode::kFused) one
// pass with a single rounding (fp32 fma); otherwise the reference's multiply then add, each rounded.
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// y: [B, S, C] contiguous (overwritten), x: [B, S, C] (last dim contiguous, any stride over B and S),
// gate: [B, C] (any row stride).
void gated_residual_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate);

}  // namespace fluxbatch::ops
