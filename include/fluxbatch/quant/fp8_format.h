// fp8 (float8_e4m3fn) weights for the fp8 GEMMs of --compute fp8, and the fp8 checkpoints users have.
// One fp32 scale per output channel: weight[n, :] = data[n, :] * scale[n]. Made at load from bf16 / fp16 /
// fp32 weights (each row's absmax maps to e4m3's largest finite value, 448), from NF4 weights (dequantized
// tensor by tensor), or taken as stored from a ComfyUI / Kijai fp8 file: a plain cast has scale 1, a
// "scaled fp8" file one per-tensor scale_weight, which is that scale on every row (exact, no rounding).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace fluxbatch::quant {

inline constexpr float kFp8E4m3Max = 448.0f;

struct Fp8Tensor {
  at::Tensor data;   // [N, K] float8_e4m3fn
  at::Tensor scale;  // [N] float32

  int64_t rows() const { return data.size(0); }
  int64_t cols() const { return data.size(1); }
  c10::Device device() const { return data.device(); }
  int64_t bytes() const { return static_cast<int64_t>(data.nbytes() + scale.nbytes()); }
  Fp8Tensor to(const c10::Device& device) const;
  // Throws ModelError("<what>: ...") unless data is 2-D e4m3 and scale fp32 [N] on the same device.
  void validate(const std::string& what) const;
};

// w [N, K] (float32 / float16 / bfloat16, any device) -> per-row scale = max|w[n, :]| / 448 (1 for a row of
// zeros), data = e4m3(w / scale) rounded to nearest even, on w's device. The division is fp32.
Fp8Tensor quantize_fp8_per_channel(const at::Tensor& w);

// w [N, K] -> one per-tensor scale = max|w| / 448 (1 for zeros) and data = e4m3(w / scale), as ComfyUI's
// "scaled fp8" files store a weight (with the scale as "<p>.scale_weight"); fp8_from_checkpoint reads it back.
Fp8Tensor quantize_fp8_per_tensor(const at::Tensor& w);

// A checkpoint's fp8 weight [N, K] with one per-tensor scale (1 for a plain cast): kept as stored.
Fp8Tensor fp8_from_checkpoint(const at::Tensor& data, float scale);

// data * scale[:, None] in `dtype`, on the tensor's device (the fp32 product, rounded once).
at::Tensor dequantize_fp8(const Fp8Tensor& w, c10::ScalarType dtype);

}  // namespace fluxbatch::quant
