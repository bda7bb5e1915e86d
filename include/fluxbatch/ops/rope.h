// Rotary position embedding in the reference's "interleaved real" form (diffusers apply_rotary_emb with
// use_real=True, use_real_unbind_dim=-1): dims (2j, 2j+1) of a head form pair j. The ATen composition,
// rounding as the reference does; ops::rms_norm_rope_ fuses it with the q/k RMSNorm on CUDA.
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::ops {

// x: [B, S, H, D], cos, sin: [S, D] fp32 (each frequency twice) -> [B, S, H, D] in x's dtype; the
// rotation runs in fp32: x.float() * cos + rotated.float() * sin.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace fluxbatch::ops
