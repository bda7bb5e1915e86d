#include "fluxbatch/ops/gated_residual.h"

#include "fluxbatch/ops/kernel_mode.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

void gated_residual_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate) {
  const char* op = "gated_residual_";
  detail::check_rows(op, "x", x);
  detail::check_rows(op, "y", y);
  FLUXBATCH_CHECK(y.sizes() == x.sizes() && y.is_contiguous(), std::invalid_argument,
                  std::string(op) + ": y must be contiguous and shaped like x");
  detail::check_like(op, "y", y, x);
  detail::check_per_image(op, "gate", gate, x);
  detail::check_like(op, "gate", gate, x);
#ifdef FLUXBATCH_WITH_CUDA
  if (y.is_cuda() && kernel_mode() == KernelMode::kFused) {
    detail::gated_residual_cuda(y, x, gate);
    return;
  }
#endif
  // The reference's x + gate * y: the product rounded, then the sum (both commute exactly).
  y.mul_(gate.unsqueeze(1)).add_(x);
}

}  // namespace fluxbatch::ops
