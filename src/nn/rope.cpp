#include "fluxbatch/nn/rope.h"

#include "fluxbatch/core/error.h"

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

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope) {
  // [S, D] -> [S, 1, D]: broadcasts against [B, S, H, D] like the reference's cos[None, :, None, :].
  const at::Tensor cos = rope.cos.unsqueeze(1);
  const at::Tensor sin = rope.sin.unsqueeze(1);
  // (x_re, x_im) pairs -> (-x_im, x_re): multiplying by i.
  const auto pairs = x.unflatten(-1, {-1, 2}).unbind(-1);
  // The reference's x.float() * cos + rotated.float() * sin, with the same roundings (separate
  // multiplies, then the add; no fused multiply-add), computed in place: a C++ expression keeps
  // every temporary until its end, and at 1024x1024 each fp32 one is 54 MiB per image.
  at::Tensor out = x.scalar_type() == at::kFloat ? x * cos : x.to(at::kFloat).mul_(cos);  // [B, S, H, D] fp32
  at::Tensor rotated = at::stack({-pairs[1], pairs[0]}, -1).flatten(-2).to(at::kFloat);  // a new tensor
  out.add_(rotated.mul_(sin));
  rotated = at::Tensor();
  return out.to(x.scalar_type());
}

}  // namespace fluxbatch::nn
