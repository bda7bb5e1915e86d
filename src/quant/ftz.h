// bitsandbytes' CUDA library is built with --use_fast_math: its float multiplies and min/max flush
// subnormal inputs and results to a zero of the same sign (FMUL.FTZ / FMNMX.FTZ in its SASS). The
// references apply the same flush where bnb's kernels do, so tiny values round like bnb on a GPU.
#pragma once
#include <cmath>

namespace fluxbatch::quant::detail {

inline float flush_subnormal(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }

// a * b as FMUL.FTZ computes it.
inline float mul_ftz(float a, float b) { return flush_subnormal(flush_subnormal(a) * flush_subnormal(b)); }

}  // namespace fluxbatch::quant::detail
