#include "fluxbatch/ops/rope.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos_table, const at::Tensor& sin_table) {
  FLUXBATCH_CHECK(x.dim() == 4 && cos_table.dim() == 2 && cos_table.size(0) == x.size(1) &&
                      cos_table.size(1) == x.size(3) && sin_table.sizes() == cos_table.sizes(),
                  std::invalid_argument, "apply_rope: x must be [B, S, H, D] and the tables [S, D]");
  // [S, D] -> [S, 1, D]: broadcasts against [B, S, H, D] like the reference's cos[None, :, None, :].
  const at::Tensor cos = cos_table.unsqueeze(1);
  const at::Tensor sin = sin_table.unsqueeze(1);
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

}  // namespace fluxbatch::ops
