// Device helpers shared by the fused FLUX kernels: 8-value vector loads and stores for bf16 / fp16 /
// fp32 (16-byte accesses) and block sums.
#pragma once
#include "cuda_types.cuh"

#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fluxbatch::ops::cuda {

// N consecutive values (N * sizeof(T) a multiple of 16 bytes, p 16-byte aligned) <-> fp32 registers.
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&v)[N]) {
  static_assert((N * sizeof(T)) % 16 == 0, "whole 16-byte accesses");
  alignas(16) T raw[N];
#pragma unroll
  for (int i = 0; i < int(N * sizeof(T) / 16); ++i) reinterpret_cast<uint4*>(raw)[i] = reinterpret_cast<const uint4*>(p)[i];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = to_float(raw[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&v)[N]) {
  alignas(16) T raw[N];
#pragma unroll
  for (int i = 0; i < N; ++i) raw[i] = from_float<T>(v[i]);
#pragma unroll
  for (int i = 0; i < int(N * sizeof(T) / 16); ++i) reinterpret_cast<uint4*>(p)[i] = reinterpret_cast<const uint4*>(raw)[i];
}

// Eight consecutive values of a row held in registers as stored (one 16-byte load): for bf16 / fp16 two to a
// 32-bit register, half the registers of eight floats, so that more rows fit on an SM at once; for fp32 eight
// floats. get() widens a value to fp32 exactly, set_pair() rounds two to T (exact for values already rounded to T).
template <typename T>
struct Packed8 {
  static_assert(sizeof(T) == 2, "16-bit storage types");
  uint32_t w[4];
  __device__ __forceinline__ void load(const T* __restrict__ p) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    w[0] = u.x;
    w[1] = u.y;
    w[2] = u.z;
    w[3] = u.w;
  }
  __device__ __forceinline__ float get(int i) const {
    const auto bits = static_cast<unsigned short>(i % 2 == 0 ? w[i / 2] & 0xFFFFu : w[i / 2] >> 16);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      return to_float(__ushort_as_bfloat16(bits));
    } else {
      return to_float(__ushort_as_half(bits));
    }
  }
  // Values 2 * pair and 2 * pair + 1 at once (one packing, no read-modify-write).
  __device__ __forceinline__ void set_pair(int pair, float lo, float hi) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      w[pair] = uint32_t(__bfloat16_as_ushort(from_float<T>(lo))) | (uint32_t(__bfloat16_as_ushort(from_float<T>(hi))) << 16);
    } else {
      w[pair] = uint32_t(__half_as_ushort(from_float<T>(lo))) | (uint32_t(__half_as_ushort(from_float<T>(hi))) << 16);
    }
  }
};
template <>
struct Packed8<float> {
  float f[8];
  __device__ __forceinline__ void load(const float* __restrict__ p) { load_vec<float, 8>(p, f); }
  __device__ __forceinline__ float get(int i) const { return f[i]; }
  __device__ __forceinline__ void set_pair(int pair, float lo, float hi) {
    f[2 * pair] = lo;
    f[2 * pair + 1] = hi;
  }
};

// Element by element (any alignment): the fallback of the vector forms above.
template <typename T, int N>
__device__ __forceinline__ void load_scalar(const T* __restrict__ p, float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = to_float(p[i]);
}
template <typename T, int N>
__device__ __forceinline__ void store_scalar(T* __restrict__ p, const float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) p[i] = from_float<T>(v[i]);
}

template <typename T, int N, bool kVector>
__device__ __forceinline__ void load(const T* __restrict__ p, float (&v)[N]) {
  if constexpr (kVector) load_vec<T, N>(p, v); else load_scalar<T, N>(p, v);
}
template <typename T, int N, bool kVector>
__device__ __forceinline__ void store(T* __restrict__ p, const float (&v)[N]) {
  if constexpr (kVector) store_vec<T, N>(p, v); else store_scalar<T, N>(p, v);
}

// Sum over the thread block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `scratch`: 32 floats of shared memory, reusable once this returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xFFFFFFFFu, total, offset);
  __syncthreads();  // scratch may be written again by the next call
  return total;
}

// Maximum of non-negative values over the thread block (absent warps count as 0), as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total = fmaxf(total, __shfl_xor_sync(0xFFFFFFFFu, total, offset));
  __syncthreads();
  return total;
}

// A row's fp8 scale (ops/fp8_linear.h) and what each of its values is multiplied by before rounding to e4m3,
// from the row's largest magnitude: absmax / 448 and 448 / absmax by IEEE division, once per row, as the CPU
// reference computes them; both 1 for a row of zeros (or of values so small that 448 / absmax overflows).
// One multiplication a value instead of a division (ten-odd instructions a value).
struct Fp8RowScale {
  float scale;
  float inverse;
};
__device__ __forceinline__ Fp8RowScale fp8_row_scale(float absmax) {
  const float inverse = __fdiv_rn(448.0f, absmax);
  if (isinf(inverse)) return {1.0f, 1.0f};
  return {__fdiv_rn(absmax, 448.0f), inverse};
}

// N values * inverse (fp8_row_inverse), clamped to e4m3's range and rounded to nearest even, stored as N bytes
// (8-byte accesses when N is a multiple of 8 and p is aligned to them).
template <int N, bool kVector>
__device__ __forceinline__ void store_fp8(uint8_t* __restrict__ p, const float (&v)[N], float inverse) {
  alignas(8) uint8_t raw[N];
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float q = fminf(fmaxf(__fmul_rn(v[i], inverse), -448.0f), 448.0f);
    raw[i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3));
  }
  if constexpr (kVector && N % 8 == 0) {
#pragma unroll
    for (int i = 0; i < N / 8; ++i) reinterpret_cast<uint2*>(p)[i] = reinterpret_cast<const uint2*>(raw)[i];
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = raw[i];
  }
}

// Launch shape of the kernels that keep a row in registers: `chunks` 8-value chunks spread over at most
// 512 threads (several blocks then share an SM), chunk c = threadIdx.x + j * blockDim.x for j < per, with
// per the fewest of 1, 2, 4, ... up to max_per that do it. per = 0: the row is too long for registers.
struct RegisterRows {
  int per = 0;
  int threads = 0;
};
inline RegisterRows register_rows(int64_t chunks, int max_per) {
  for (int per = 1; per <= max_per; per *= 2) {
    if (chunks <= int64_t(per) * 512) {
      const int64_t needed = (chunks + per - 1) / per;
      return {per, static_cast<int>(std::max<int64_t>(32, (needed + 31) / 32 * 32))};
    }
  }
  return {};
}

}  // namespace fluxbatch::ops::cuda
