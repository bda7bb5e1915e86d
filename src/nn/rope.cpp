#include "fluxbatch/nn/rope.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/rope.h"

#include <ATen/ATen.h>

#include <string>

namespace fluxbatch::nn {

RopeTables rope_1d(int64_t dim, const at::Tensor& pos, double theta) {
  FLUXBATCH_CHECK(dim > 0 && dim % 2 == 0, ModelError,
                  "rope_1d: dim must be even and positive, got " + std::to_string(dim));
  FLUXBATCH_CHECK(pos.dim() == 1, InputError, "rope_1d: pos must be 1-D, got " + std::to_string(pos.dim()) + " dims");
  // Same op sequence as diffusers: 1.0 / (theta ** (arange(0, dim, 2) / dim)), where `1.0 / t` is
  // t.reciprocal() * 1.0, then outer(pos_fp32, freqs_fp64) in float64.
  const at::Tensor exponent = at::arange(0, dim, 2, pos.options().dtype(at::kDouble)) / dim;
  const at::Tensor freqs = at::pow(theta, exponent).reciprocal();                // [D/2]
  const at::Tensor angles = at::outer(pos.to(at::kFloat), freqs);                 // [S, D/2] float64
  // Rounding to fp32 before repeat_interleave gives the same values with half the traffic.
  return {angles.cos().to(at::kFloat).repeat_interleave(2, 1), angles.sin().to(at::kFloat).repeat_interleave(2, 1)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope) { return ops::apply_rope(x, rope.cos, rope.sin); }

}  // namespace fluxbatch::nn
