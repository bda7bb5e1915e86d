#include "fluxbatch/ops/gated_residual.h"

#include "fluxbatch/ops/kernel_mode.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

void gated_residual_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate) {
  detail::check_residual_update("gated_residual_", y, x, gate);
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
