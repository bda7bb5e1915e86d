// bitsandbytes' dQuantizeNF4 (csrc/kernels.cu), shared by the CPU reference (nf4_quantize.cpp) and the
// CUDA kernel (nf4_quantize_cuda.cu), so both take exactly the same decisions.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define FLUXBATCH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLUXBATCH_HOST_DEVICE inline
#endif

namespace fluxbatch::quant::detail {

// Thresholds are the float literals of bnb's source (midpoints of neighbouring codes); a value exactly
// on a threshold takes the lower code; NaN takes code 0 (every comparison is false).
FLUXBATCH_HOST_DEVICE uint8_t nf4_code_like_cuda(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111 : 0b1110;
      return x > 0.5016634166240692f ? 0b1101 : 0b1100;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011 : 0b1010;
    return x > 0.1202552504837513f ? 0b1001 : 0b1000;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111 : 0b0110;
    return x > -0.23460740596055984f ? 0b0101 : 0b0100;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011 : 0b0010;
  return x > -0.8480964004993439f ? 0b0001 : 0b0000;
}

}  // namespace fluxbatch::quant::detail
