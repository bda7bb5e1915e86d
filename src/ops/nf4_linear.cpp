#include "fluxbatch/ops/nf4_linear.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/nf4_dequantize.h"
#include "fluxbatch/ops/per_image_linear.h"
#include "nf4_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {
namespace {

// A [numel] view of *scratch of `dtype` on `device`, reallocating only when it is too small or of
// another dtype / device. Stream order makes reuse safe: the next layer's dequantize is queued after
// this layer's GEMM on the same stream.
at::Tensor scratch_view(at::Tensor* scratch, int64_t numel, at::ScalarType dtype, const c10::Device& device) {
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  if (scratch == nullptr) return at::empty({numel}, options);
  if (!scratch->defined() || scratch->scalar_type() != dtype || scratch->device() != device ||
      scratch->numel() < numel) {
    *scratch = at::Tensor();  // free the old buffer before the new one is allocated
    *scratch = at::empty({numel}, options);
  }
  return scratch->narrow(0, 0, numel);
}

}  // namespace

at::Tensor nf4_dense_weight(const quant::Nf4Tensor& w, at::ScalarType dtype, at::Tensor* scratch) {
  at::Tensor weight = scratch_view(scratch, w.numel(), w.dtype, w.device()).view(w.shape);
  nf4_dequantize(w, weight);
  // Rounded to w.dtype first even when x is wider, as bnb does.
  return weight.scalar_type() == dtype ? weight : weight.to(dtype);
}

at::Tensor nf4_linear(const at::Tensor& x, const quant::Nf4Tensor& w, const at::Tensor& bias, at::Tensor* scratch) {
  w.validate("nf4_linear");
  FLUXBATCH_CHECK(w.shape.size() == 2, std::invalid_argument, "nf4_linear: weights must be 2-D [out, in]");
  const int64_t out_features = w.shape[0];
  const int64_t in_features = w.shape[1];
  FLUXBATCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, std::invalid_argument,
                  "nf4_linear: x has " + std::to_string(x.dim() ? x.size(-1) : 0) + " features, weights expect " +
                      std::to_string(in_features));
  FLUXBATCH_CHECK(x.device() == w.device(), std::invalid_argument,
                  "nf4_linear: x is on " + x.device().str() + ", the weights on " + w.device().str());
  FLUXBATCH_CHECK(!bias.defined() || bias.numel() == out_features, std::invalid_argument,
                  "nf4_linear: bias must have " + std::to_string(out_features) + " values");
  const at::Tensor b = bias.defined() ? bias.to(x.scalar_type()) : bias;

#ifdef FLUXBATCH_WITH_CUDA
  // x: [B, ..., K] with one row per image (or [K]) -> out [B, ..., N], a row at a time so that a row
  // takes the same path at any batch size (ops::per_image_linear's reason).
  const int64_t images = x.dim() >= 2 ? x.size(0) : 1;
  if (x.is_cuda() && x.numel() == images * in_features) {
    const at::Tensor rows = x.contiguous().view({images, in_features});
    if (detail::nf4_gemv_cuda_supports(rows[0], w)) {
      std::vector<int64_t> out_shape = x.sizes().vec();
      out_shape.back() = out_features;
      at::Tensor out = at::empty(out_shape, x.options());
      at::Tensor flat = out.view({images, out_features});
      for (int64_t i = 0; i < images; ++i) {
        at::Tensor row_out = flat[i];
        detail::nf4_gemv_cuda(rows[i], w, b, row_out);
      }
      return out;
    }
  }
#endif
  // x: [B, ..., K] -> [B, ..., N]: W dequantized once, then a GEMM per image.
  return per_image_linear(x, nf4_dense_weight(w, x.scalar_type(), scratch), b);
}

}  // namespace fluxbatch::ops
