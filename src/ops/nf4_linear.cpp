#include "fluxbatch/ops/nf4_linear.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/nf4_dequantize.h"
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

// The dense weight [N, K] in x's dtype.
at::Tensor dense_weight(const quant::Nf4Tensor& w, at::ScalarType x_dtype, at::Tensor* scratch) {
  at::Tensor weight = scratch_view(scratch, w.numel(), w.dtype, w.device()).view(w.shape);
  nf4_dequantize(w, weight);
  // Rounded to w.dtype first even when x is wider, as bnb does.
  return weight.scalar_type() == x_dtype ? weight : weight.to(x_dtype);
}

}  // namespace

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
  // x: [..., K] with one row in all -> out [..., N]
  if (x.is_cuda() && x.numel() == in_features) {
    const at::Tensor row = x.contiguous().view({in_features});
    if (detail::nf4_gemv_cuda_supports(row, w)) {
      std::vector<int64_t> out_shape = x.sizes().vec();
      out_shape.back() = out_features;
      at::Tensor out = at::empty(out_shape, x.options());
      at::Tensor flat = out.view({out_features});
      detail::nf4_gemv_cuda(row, w, b, flat);
      return out;
    }
  }
#endif
  // x: [..., K] -> [..., N]
  return at::linear(x, dense_weight(w, x.scalar_type(), scratch), b);
}

}  // namespace fluxbatch::ops
