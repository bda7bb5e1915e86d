#include "fluxbatch/ops/per_image_linear.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace fluxbatch::ops {

at::Tensor per_image_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  FLUXBATCH_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), std::invalid_argument,
                  "per_image_linear: x has " + std::to_string(x.dim() ? x.size(-1) : 0) + " features, w is [" +
                      std::to_string(w.size(0)) + ", " + std::to_string(w.dim() == 2 ? w.size(1) : 0) + "]");
  if (x.dim() == 1) return at::linear(x, w, bias);
  const int64_t in = w.size(1), out_features = w.size(0);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out_features;
  at::Tensor out = at::empty(shape, x.options());  // [B, ..., N]
  for (int64_t b = 0; b < x.size(0); ++b) {
    // [rows, K] -> [rows, N]: at::linear folds a contiguous input to 2-D and calls addmm (bias fused
    // into the GEMM epilogue) or mm; the _out forms run the same kernels into the slice.
    const at::Tensor rows = x.narrow(0, b, 1).contiguous().view({-1, in});
    at::Tensor target = out.narrow(0, b, 1).view({-1, out_features});
    if (bias.defined()) {
      at::addmm_out(target, bias, rows, w.t());
    } else {
      at::mm_out(target, rows, w.t());
    }
  }
  return out;
}

}  // namespace fluxbatch::ops
