// Device helpers shared by the NF4 kernels: the code table, block absmax (plain or double-quantized)
// and the float -> storage type conversions with bnb's rounding (round to nearest even).
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include "cuda_types.cuh"

#include <cfloat>
#include <cstdint>

namespace fluxbatch::ops::cuda {

// a * b as bnb's fast-math build computes it (FMUL.FTZ): a subnormal product becomes a signed zero.
// Written out so the result does not depend on this project's nvcc flags. (Subnormal inputs need no
// flush here: the codes never are, and a subnormal absmax makes every product subnormal anyway.)
__device__ __forceinline__ float mul_ftz(float a, float b) {
  const float p = __fmul_rn(a, b);
  return fabsf(p) < FLT_MIN ? copysignf(0.0f, p) : p;
}

// Per-block absmax, resolved on the fly so no float copy of a nested absmax is ever materialised.
struct Nf4Absmax {
  const float* absmax = nullptr;  // plain; nullptr when nested
  const uint8_t* q8 = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_quant_map = nullptr;
  float offset = 0.0f;
  int64_t nested_blocksize = 256;

  __device__ __forceinline__ float operator()(int64_t block) const {
    if (absmax != nullptr) return __ldg(absmax + block);
    // bnb: dequantize_blockwise (one fp32 product), then absmax += offset (one fp32 add). The _rn
    // intrinsics keep nvcc from fusing the two into an FMA, which would round once.
    const float product =
        mul_ftz(__ldg(nested_quant_map + __ldg(q8 + block)), __ldg(nested_absmax + block / nested_blocksize));
    return __fadd_rn(product, offset);
  }
};

inline Nf4Absmax make_absmax(const quant::Nf4Tensor& w) {
  Nf4Absmax a;
  if (!w.is_nested()) {
    a.absmax = w.absmax.data_ptr<float>();
    return a;
  }
  a.q8 = w.q8.data_ptr<uint8_t>();
  a.nested_absmax = w.nested_absmax.data_ptr<float>();
  a.nested_quant_map = w.nested_quant_map.data_ptr<float>();
  a.offset = w.offset;
  a.nested_blocksize = w.nested_blocksize;
  return a;
}

// quant::kNf4Code in global memory (as bnb keeps its nf4_dequantization_lut).
static __device__ const float kDeviceNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// The codes copied into shared memory by each thread block: a per-thread lookup with divergent
// indices is conflict-free there, unlike constant memory.
__device__ __forceinline__ void load_code_table(float* table) {
  if (threadIdx.x < 16) table[threadIdx.x] = kDeviceNf4Code[threadIdx.x];
  __syncthreads();
}



// Byte k (0..15) of a 16-byte load, in memory order (little-endian words).
__device__ __forceinline__ uint32_t byte_of(const uint4& v, int k) {
  const uint32_t word = k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w;
  return (word >> (8 * (k & 3))) & 0xFFu;
}

}  // namespace fluxbatch::ops::cuda
