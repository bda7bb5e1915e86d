#include "fluxbatch/ops/per_image_linear.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/linear_gelu.h"

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace fluxbatch::ops {

namespace {

void check_shapes(const at::Tensor& x, const at::Tensor& w) {
  FLUXBATCH_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), std::invalid_argument,
                  "per_image_linear: x has " + std::to_string(x.dim() ? x.size(-1) : 0) + " features, w is [" +
                      std::to_string(w.size(0)) + ", " + std::to_string(w.dim() == 2 ? w.size(1) : 0) + "]");
}

}  // namespace

at::Tensor per_image_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  check_shapes(x, w);
  if (x.dim() == 1) return at::linear(x, w, bias);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.size(0);
  at::Tensor out = at::empty(shape, x.options());  // [B, ..., N]
  per_image_linear_out(out, x, w, bias);
  return out;
}

void per_image_linear_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                          bool gelu_tanh) {
  check_shapes(x, w);
  const int64_t in = w.size(1), out_features = w.size(0);
  FLUXBATCH_CHECK(x.dim() >= 2 && out.dim() == x.dim() && out.size(0) == x.size(0) && out.size(-1) == out_features &&
                      out.stride(-1) == 1,
                  std::invalid_argument, "per_image_linear_out: out must be [B, ..., " + std::to_string(out_features) +
                                             "] like x, with unit last stride");
  for (int64_t b = 0; b < x.size(0); ++b) {
    // [rows, K] -> [rows, N]: at::linear folds a contiguous input to 2-D and calls addmm (bias fused
    // into the GEMM epilogue) or mm; the _out forms run the same kernels into the slice.
    const at::Tensor rows = x.narrow(0, b, 1).contiguous().view({-1, in});
    at::Tensor target = out.narrow(0, b, 1).view({-1, out_features});
    if (gelu_tanh) {
      linear_gelu_tanh_out(target, rows, w, bias);
      continue;
    }
    // Rows with a gap between them are computed contiguous and copied: a GEMM library may sum in another
    // order for another output stride (the CPU's does), and an image must not depend on where it is written.
    at::Tensor product = target.is_contiguous() ? target : at::empty(target.sizes(), target.options());
    if (bias.defined()) {
      at::addmm_out(product, bias, rows, w.t());
    } else {
      at::mm_out(product, rows, w.t());
    }
    if (!product.is_same(target)) target.copy_(product);
  }
}

}  // namespace fluxbatch::ops
