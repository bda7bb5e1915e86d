// fp8 attention (--attention fp8): softmax(q k^T / sqrt(D)) v over e4m3 operands with one scale per image, the
// way cuDNN's fp8 flash attention computes it on Hopper: the scores and the weighted sum accumulate in fp32,
// the (unnormalized) probabilities are rounded to e4m3 (times kFp8AttentionProbScale) before the product
// with v, the row sums come from the unrounded ones, and the output is written in e4m3. On CUDA one cuDNN call
// per image (so an image does not depend on its batch, as the GEMMs); the CPU runs the reference: the same
// steps in fp32 with at:: ops, the softmax over each whole row at once (cuDNN's runs block by block, so the
// two agree to within e4m3 rounding, not bit for bit; [cuda] test).
#pragma once
#include "fluxbatch/ops/fp8_heads.h"

#include <c10/core/Device.h>

#include <cstdint>

namespace fluxbatch::ops {

// What the probabilities (at most 1) are multiplied by before rounding to e4m3: a power of two, so the
// largest is exact, and values down to 2^-17 keep a byte.
constexpr float kFp8AttentionProbScale = 256.0f;
// The output's scale over v's: each output is a weighted mean of v's values, whose weights sum to 1 within
// e4m3 rounding (at most 1 + 2^-4), so v's range with this margin holds it.
constexpr float kFp8AttentionOutMargin = 1.125f;

// q: [B, Sq, H * D], k, v: [B, Skv, H * D] (fp8_heads.h: unit last stride, token rows may lie apart)
// -> out: data [B, Sq, H * D] contiguous, scale [B] = v.scale * kFp8AttentionOutMargin.
Fp8Heads fp8_attention(const Fp8Heads& q, const Fp8Heads& k, const Fp8Heads& v, int64_t head_dim);

// Whether `device` runs fp8_attention's fast path: built with cuDNN's frontend, a CUDA device of compute
// capability 9.0 or newer (Hopper), cuDNN 9.1 or newer. False for the CPU (which runs the reference, for tests).
bool fp8_attention_supported(const c10::Device& device);

}  // namespace fluxbatch::ops
