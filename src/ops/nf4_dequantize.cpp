#include "fluxbatch/ops/nf4_dequantize.h"

#include "fluxbatch/core/error.h"
#include "nf4_kernels.h"

#include <ATen/ATen.h>

namespace fluxbatch::ops {

void nf4_dequantize(const quant::Nf4Tensor& w, at::Tensor& out) {
  w.validate("nf4_dequantize");
  const at::ScalarType dtype = out.scalar_type();
  FLUXBATCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, std::invalid_argument,
                  "nf4_dequantize: out must be float32, float16 or bfloat16");
  FLUXBATCH_CHECK(out.numel() == w.numel() && out.is_contiguous(), std::invalid_argument,
                  "nf4_dequantize: out must be contiguous with " + std::to_string(w.numel()) + " values");
  FLUXBATCH_CHECK(out.device() == w.device(), std::invalid_argument,
                  "nf4_dequantize: out is on " + out.device().str() + ", the weights on " + w.device().str());
  if (w.device().is_cpu()) {
    detail::nf4_dequantize_cpu(w, out);
    return;
  }
#ifdef FLUXBATCH_WITH_CUDA
  if (w.device().is_cuda()) {
    detail::nf4_dequantize_cuda(w, out);
    return;
  }
#endif
  throw DeviceError("nf4_dequantize: no kernel for device " + w.device().str());
}

at::Tensor nf4_dequantize(const quant::Nf4Tensor& w, c10::ScalarType dtype) {
  at::Tensor out = at::empty(w.shape, at::TensorOptions().dtype(dtype).device(w.device()));
  nf4_dequantize(w, out);
  return out;
}

at::Tensor nf4_dequantize(const quant::Nf4Tensor& w) { return nf4_dequantize(w, w.dtype); }

}  // namespace fluxbatch::ops
