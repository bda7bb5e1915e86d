// Rotary position embeddings in the "interleaved real" form (diffusers get_1d_rotary_pos_embed with
// use_real=True, repeat_interleave_real=True, and apply_rotary_emb with use_real_unbind_dim=-1): dims
// (2j, 2j+1) of a head form pair j, rotated by angle pos * theta^(-2j/dim).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fluxbatch::nn {

// cos/sin tables, fp32, [S, D] with each frequency repeated twice (for dims 2j and 2j+1).
struct RopeTables {
  at::Tensor cos;
  at::Tensor sin;
};

// pos: [S] (any floating or integer dtype; the reference first casts ids to fp32) -> tables [S, dim].
// Frequencies and angles are computed in float64 as diffusers does on CPU and CUDA, then rounded to fp32.
RopeTables rope_1d(int64_t dim, const at::Tensor& pos, double theta);

// x: [B, S, H, D], tables [S, D] -> [B, S, H, D] in x's dtype; the rotation itself runs in fp32.
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope);

}  // namespace fluxbatch::nn
