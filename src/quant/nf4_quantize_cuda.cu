// NF4 quantization on the GPU, as bitsandbytes' CUDA library does it (csrc/kernels.cu
// kQuantizeBlockwise<T, 64, 2, 0, NF4>, built with --use_fast_math): per block of 64 values the
// absmax (FMNMX.FTZ), its reciprocal by MUFU.RCP (rcp.approx.ftz, not a correctly rounded 1/x: this is
// why the GPU result is bnb's exactly, where the CPU reference is only within an ulp of a threshold),
// then dQuantizeNF4(x * reciprocal) with a flushing multiply. One warp per block of 64, two values
// (one output byte) per lane: loads and stores are coalesced and the absmax is a warp reduction.
#include "nf4_quantize_cuda.h"
#include "nf4_code_tree.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

namespace fluxbatch::quant::detail {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

__device__ __forceinline__ float flush(float v) { return fabsf(v) < FLT_MIN ? copysignf(0.0f, v) : v; }
__device__ __forceinline__ float mul_ftz(float a, float b) { return flush(__fmul_rn(flush(a), flush(b))); }
__device__ __forceinline__ float rcp_approx_ftz(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Blocks of exactly 64 values (blocksize == 2 * warp size): lane l owns values 2l and 2l + 1.
template <typename T>
__global__ void __launch_bounds__(kThreads) quantize_nf4_kernel(const T* __restrict__ w, int64_t n, int64_t n_blocks,
                                                                uint8_t* __restrict__ packed,
                                                                float* __restrict__ absmax) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * (kThreads / kWarp);
  for (int64_t block = int64_t(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp; block < n_blocks;
       block += warps) {
    const int64_t i = block * 2 * kWarp + 2 * lane;
    // Past the end the kernel loads zeros (bnb's Load with a default of 0): they never raise the max.
    const float a = i < n ? to_float(w[i]) : 0.0f;
    const float b = i + 1 < n ? to_float(w[i + 1]) : 0.0f;
    float m = fmaxf(fabsf(flush(a)), fabsf(flush(b)));
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    const float reciprocal = rcp_approx_ftz(m);
    if (lane == 0) absmax[block] = m;
    if (i < n) packed[i / 2] = static_cast<uint8_t>((nf4_code_like_cuda(mul_ftz(a, reciprocal)) << 4) |
                                                    nf4_code_like_cuda(mul_ftz(b, reciprocal)));
  }
}

template <typename T>
void launch(const T* w, int64_t n, at::Tensor& packed, at::Tensor& absmax) {
  const int64_t n_blocks = absmax.numel();
  const int64_t grid = std::min<int64_t>((n_blocks + kThreads / kWarp - 1) / (kThreads / kWarp), 65535 * 8);
  quantize_nf4_kernel<T><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      w, n, n_blocks, packed.data_ptr<uint8_t>(), absmax.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void quantize_nf4_blocks_cuda(const at::Tensor& w, int64_t blocksize, at::Tensor& packed, at::Tensor& absmax) {
  TORCH_CHECK(blocksize == 2 * kWarp, "quantize_nf4 on CUDA: blocksize must be 64");
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t n = w.numel();
  switch (w.scalar_type()) {
    case at::kBFloat16:
      launch(reinterpret_cast<const __nv_bfloat16*>(w.data_ptr<at::BFloat16>()), n, packed, absmax);
      break;
    case at::kHalf:
      launch(reinterpret_cast<const __half*>(w.data_ptr<at::Half>()), n, packed, absmax);
      break;
    case at::kFloat:
      launch(w.data_ptr<float>(), n, packed, absmax);
      break;
    default:
      TORCH_CHECK(false, "quantize_nf4 on CUDA: unsupported dtype ", w.scalar_type());
  }
}

}  // namespace fluxbatch::quant::detail
