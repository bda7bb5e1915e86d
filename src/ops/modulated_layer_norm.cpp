#include "fluxbatch/ops/modulated_layer_norm.h"

#include "fluxbatch/ops/kernel_mode.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {
namespace {

bool fused(const at::Tensor& x) { return x.is_cuda() && kernel_mode() == KernelMode::kFused; }

void check(const char* op, const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  detail::check_rows(op, "x", x);
  detail::check_per_image(op, "shift", shift, x);
  detail::check_per_image(op, "scale", scale, x);
  detail::check_like(op, "shift", shift, x);
  detail::check_like(op, "scale", scale, x);
}

// The reference: LayerNorm, then * (1 + scale), then + shift, each rounded to x's dtype (in place on the
// normalised copy: the same roundings as the out-of-place expression, one large temporary fewer).
at::Tensor reference(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  at::Tensor n = at::layer_norm(x, {x.size(-1)}, /*weight=*/{}, /*bias=*/{}, eps);
  n.mul_(1 + scale.unsqueeze(1)).add_(shift.unsqueeze(1));
  return n;
}

void check_residual(const char* op, const at::Tensor& y, const at::Tensor& x, const at::Tensor& gate,
                    const at::Tensor& shift, const at::Tensor& scale) {
  check(op, x, shift, scale);
  detail::check_residual_update(op, y, x, gate);
}

}  // namespace

at::Tensor modulated_layer_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  check("modulated_layer_norm", x, shift, scale);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(x)) {
    at::Tensor out = at::empty(x.sizes(), x.options());
    detail::modulated_layer_norm_cuda(x, nullptr, at::Tensor(), shift, scale, eps, &out, nullptr);
    return out;
  }
#endif
  return reference(x, shift, scale, eps);
}

Fp8Rows modulated_layer_norm_fp8(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps) {
  check("modulated_layer_norm_fp8", x, shift, scale);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(x)) {
    Fp8Rows out{at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn)),
                at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat))};
    detail::modulated_layer_norm_cuda(x, nullptr, at::Tensor(), shift, scale, eps, nullptr, &out);
    return out;
  }
#endif
  // The reference: the rounded modulated LayerNorm, then the row quantization.
  return quantize_fp8_rows(reference(x, shift, scale, eps));
}

at::Tensor gated_residual_layer_norm_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate,
                                      const at::Tensor& shift, const at::Tensor& scale, double eps) {
  check_residual("gated_residual_layer_norm_", y, x, gate, shift, scale);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(x)) {
    at::Tensor out = at::empty(x.sizes(), x.options());
    detail::modulated_layer_norm_cuda(x, &y, gate, shift, scale, eps, &out, nullptr);
    return out;
  }
#endif
  // The reference's x + gate * y: the product rounded, then the sum (both commute exactly).
  y.mul_(gate.unsqueeze(1)).add_(x);
  return reference(y, shift, scale, eps);
}

Fp8Rows gated_residual_layer_norm_fp8_(at::Tensor& y, const at::Tensor& x, const at::Tensor& gate,
                                       const at::Tensor& shift, const at::Tensor& scale, double eps) {
  check_residual("gated_residual_layer_norm_fp8_", y, x, gate, shift, scale);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(x)) {
    Fp8Rows out{at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn)),
                at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat))};
    detail::modulated_layer_norm_cuda(x, &y, gate, shift, scale, eps, nullptr, &out);
    return out;
  }
#endif
  // The reference: the rounded norm after the residual update, then the row quantization.
  return quantize_fp8_rows(gated_residual_layer_norm_(y, x, gate, shift, scale, eps));
}

}  // namespace fluxbatch::ops
