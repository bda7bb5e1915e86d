#include "fluxbatch/ops/linear_gelu.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

void linear_gelu_tanh_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  FLUXBATCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1) && x.is_contiguous() && w.is_contiguous(),
                  std::invalid_argument, "linear_gelu_tanh_out: x [M, K] and w [N, K] must be contiguous");
  FLUXBATCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == w.size(0) && out.stride(1) == 1 &&
                      out.stride(0) >= out.size(1),
                  std::invalid_argument, "linear_gelu_tanh_out: out must be [M, N] with unit column stride");
  FLUXBATCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.size(0) && bias.is_contiguous()),
                  std::invalid_argument, "linear_gelu_tanh_out: bias must be [N]");
  FLUXBATCH_CHECK(x.scalar_type() == w.scalar_type() && out.scalar_type() == x.scalar_type() &&
                      (!bias.defined() || bias.scalar_type() == x.scalar_type()) && x.device() == w.device() &&
                      out.device() == x.device() && (!bias.defined() || bias.device() == x.device()),
                  std::invalid_argument, "linear_gelu_tanh_out: one dtype and device for every tensor");
#ifdef FLUXBATCH_WITH_CUDA
  if (x.is_cuda() && kernel_mode() == KernelMode::kFused && detail::linear_gelu_cuda(out, x, w, bias)) return;
#endif
  // The reference: the GEMM with the bias in its epilogue (at::linear's addmm), rounded, then GELU. A GEMM
  // library may sum in another order for another output stride (the CPU's does), so rows that are not
  // contiguous get the product computed contiguous and copied: exactly at::linear's values.
  at::Tensor target = out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
  if (bias.defined()) {
    at::addmm_out(target, bias, x, w.t());
  } else {
    at::mm_out(target, x, w.t());
  }
  at::gelu_(target, "tanh");
  if (!target.is_same(out)) out.copy_(target);
}

}  // namespace fluxbatch::ops
