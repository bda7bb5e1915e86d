#include "fluxbatch/ops/fp8_heads.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fp8_reference.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

Fp8Heads quantize_fp8_heads(const at::Tensor& x) {
  FLUXBATCH_CHECK(x.defined() && x.dim() == 3 && x.stride(2) == 1 &&
                      (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kFloat),
                  std::invalid_argument,
                  "quantize_fp8_heads: x must be bf16, fp16 or fp32 [B, S, C] with a contiguous last dimension");
#ifdef FLUXBATCH_WITH_CUDA
  if (x.is_cuda() && kernel_mode() == KernelMode::kFused) {
    Fp8Heads out{at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn)),
                 at::empty({x.size(0)}, x.options().dtype(at::kFloat))};
    detail::quantize_fp8_heads_cuda(x, out.data, out.scale);
    return out;
  }
#endif
  // The reference: one absmax per image over all its tokens and channels.
  const at::Tensor wide = x.to(at::kFloat);
  auto [scale, inverse] = detail::fp8_scale_and_inverse(wide.abs().amax({1, 2}));  // [B]
  return {detail::fp8_round(wide, inverse.view({-1, 1, 1})), scale};
}

at::Tensor dequantize_fp8_heads(const Fp8Heads& x, at::ScalarType dtype) {
  return (x.data.to(at::kFloat) * x.scale.view({-1, 1, 1})).to(dtype);
}

}  // namespace fluxbatch::ops
