// Device helpers shared by the fused FLUX kernels: 8-value vector loads and stores for bf16 / fp16 /
// fp32 (16-byte accesses) and block sums.
#pragma once
#include "cuda_types.cuh"

#include <cstdint>

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

}  // namespace fluxbatch::ops::cuda
