#include "fluxbatch/quant/fp8_format.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

namespace fluxbatch::quant {

Fp8Tensor Fp8Tensor::to(const c10::Device& device) const {
  return {data.to(device), scale.to(device)};
}

void Fp8Tensor::validate(const std::string& what) const {
  FLUXBATCH_CHECK(data.defined() && data.dim() == 2 && data.scalar_type() == at::kFloat8_e4m3fn, ModelError,
                  what + ": fp8 weights must be a 2-D float8_e4m3fn tensor");
  FLUXBATCH_CHECK(scale.defined() && scale.dim() == 1 && scale.size(0) == data.size(0) &&
                      scale.scalar_type() == at::kFloat && scale.device() == data.device(),
                  ModelError, what + ": fp8 scales must be float32 [" + std::to_string(data.size(0)) + "] beside the weights");
}

Fp8Tensor quantize_fp8_per_channel(const at::Tensor& w) {
  FLUXBATCH_CHECK(w.dim() == 2 && at::isFloatingType(w.scalar_type()), std::invalid_argument,
                  "quantize_fp8_per_channel: weights must be a floating [N, K] tensor");
  const at::Tensor wide = w.to(at::kFloat);
  // Tensor / tensor divisions: IEEE division on every device (ATen's CUDA division by a scalar multiplies
  // by its reciprocal, which can differ in the last bit).
  const at::Tensor absmax = wide.abs().amax(1);  // [N]
  at::Tensor scale = absmax / at::full_like(absmax, kFp8E4m3Max);
  scale.masked_fill_(scale == 0, 1.0);
  // Clamped before the cast: torch's float -> e4m3fn conversion makes NaN of anything past 448, and a
  // row's maximum divided by its own scale can round a hair above it.
  at::Tensor data = (wide / scale.unsqueeze(1)).clamp_(-kFp8E4m3Max, kFp8E4m3Max).to(at::kFloat8_e4m3fn);
  return {data, scale};
}

Fp8Tensor quantize_fp8_per_tensor(const at::Tensor& w) {
  FLUXBATCH_CHECK(w.dim() == 2 && at::isFloatingType(w.scalar_type()), std::invalid_argument,
                  "quantize_fp8_per_tensor: weights must be a floating [N, K] tensor");
  const at::Tensor wide = w.to(at::kFloat);
  const float absmax = wide.abs().max().item<float>();
  const float scale = absmax > 0.0f ? absmax / kFp8E4m3Max : 1.0f;
  // As in quantize_fp8_per_channel: a tensor divisor (IEEE division everywhere), clamped before the cast.
  const at::Tensor data = (wide / at::full({1}, scale, wide.options())).clamp_(-kFp8E4m3Max, kFp8E4m3Max)
                              .to(at::kFloat8_e4m3fn);
  return fp8_from_checkpoint(data, scale);
}

Fp8Tensor fp8_from_checkpoint(const at::Tensor& data, float scale) {
  FLUXBATCH_CHECK(data.dim() == 2 && data.scalar_type() == at::kFloat8_e4m3fn, std::invalid_argument,
                  "fp8_from_checkpoint: weights must be a 2-D float8_e4m3fn tensor");
  return {data, at::full({data.size(0)}, scale, data.options().dtype(at::kFloat))};
}

at::Tensor dequantize_fp8(const Fp8Tensor& w, c10::ScalarType dtype) {
  return (w.data.to(at::kFloat) * w.scale.unsqueeze(1)).to(dtype);
}

}  // namespace fluxbatch::quant
