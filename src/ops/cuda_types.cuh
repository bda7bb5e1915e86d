// Conversions between fp32 and the storage types of the CUDA kernels (bf16, fp16, fp32), rounding to
// nearest even as PyTorch and bitsandbytes do.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fluxbatch::ops::cuda {

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// v rounded to T and back: the value a stored T holds.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

}  // namespace fluxbatch::ops::cuda
