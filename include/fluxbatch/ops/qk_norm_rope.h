// FLUX attention's per-head RMSNorm of q (or k) followed by RoPE, in place, over a joint sequence whose
// first `text_len` tokens take the text stream's norm weight and the rest the image stream's. On CUDA
// (KernelMode::kFused) one kernel reads and writes each head row once, in fp32, rounding once, in the
// layout attention reads; otherwise RMSNorm per stream (at::rms_norm), then ops::apply_rope, as the
// reference does.
#pragma once
#include "fluxbatch/ops/fp8_heads.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fluxbatch::ops {

// x: [B, S, H * D] (last dim contiguous, any stride over B and S), overwritten.
// w_text, w_image: [D] RMSNorm weights (undefined: no affine); rows s < text_len use w_text.
// cos, sin: [S, D] fp32 RoPE tables (ops::apply_rope's).
void rms_norm_rope_(at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
                    int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps);

// The same normalization and rotation written as e4m3 (fp8 attention's q and k; x is left as it was): one
// scale for every image, sqrt(D) * max|w| / 448 over both weights (1 for none), which bounds every output
// (|x / rms(x)| <= sqrt(D), the weight scales it by at most max|w|, RoPE rotates pairs), so no pass over the
// values is needed first. The reference computes in fp32 (at::rms_norm, ops::apply_rope) and rounds once to
// e4m3; the CUDA kernel is the fused one above with an e4m3 store (rsqrtf: a byte may land one e4m3 step
// away, [cuda] test). -> data [B, S, H * D] contiguous, scale [B].
Fp8Heads rms_norm_rope_fp8(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text,
                           const at::Tensor& w_image, int64_t text_len, const at::Tensor& cos, const at::Tensor& sin,
                           double eps);

}  // namespace fluxbatch::ops
