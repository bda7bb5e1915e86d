// Device implementation behind quant::quantize_nf4 for CUDA tensors quantized like BnbBackend::kCuda.
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::quant::detail {

#ifdef FLUXBATCH_WITH_CUDA
// w: contiguous float32 / float16 / bfloat16 on a CUDA device, n = w.numel() values, as one flat run;
// packed: uint8 [(n + 1) / 2], absmax: float32 [ceil(n / blocksize)], both on w's device.
// bnb's kQuantizeBlockwise<T, 64, 2, 0, NF4>, instruction for instruction where rounding is concerned.
void quantize_nf4_blocks_cuda(const at::Tensor& w, int64_t blocksize, at::Tensor& packed, at::Tensor& absmax);
#endif

}  // namespace fluxbatch::quant::detail
