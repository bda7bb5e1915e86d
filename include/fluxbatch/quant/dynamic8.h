// bitsandbytes' blockwise 8-bit "dynamic" quantization (quantize_blockwise / dequantize_blockwise with
// the signed dynamic map). NF4 uses it to double-quantize its absmax; kept separate so it can be
// checked against bitsandbytes on its own.
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fluxbatch::quant {

// bnb create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted float32 values,
// from -0.99297 to 1.0. CPU tensor.
at::Tensor create_dynamic_map();

struct Dynamic8 {
  at::Tensor q8;      // uint8 [n]
  at::Tensor absmax;  // float32 [ceil(n / blocksize)]
  at::Tensor code;    // float32 [256]: the map the codes index (bnb's state.code)
};

// bnb quantize_blockwise(x, blocksize=blocksize) with the default dynamic map, for float32 `x` on the
// CPU, rounded like `like`:
//   kCuda: q = dQuantize<0>(code, x * (1 / absmax)): binary search, then fp32 midpoints (ties go down
//          when below the pivot's value, up when above it); subnormals flushed, and the reciprocal
//          correctly rounded where bnb uses MUFU.RCP (see BnbBackend).
//   kCpu:  code[0] set to -1.0, then the nearest code to x / absmax (ties to the lower code).
Dynamic8 quantize_dynamic8(const at::Tensor& x, int64_t blocksize, BnbBackend like);

// bnb dequantize_blockwise on CUDA: out[i] = code[q8[i]] * absmax[i / blocksize] (float32, CPU), a
// subnormal product flushed to zero.
at::Tensor dequantize_dynamic8(const Dynamic8& q, int64_t blocksize);

}  // namespace fluxbatch::quant
