// Per-image fp8 quantization of attention operands (ops/fp8_heads.h) in two passes over an image's
// [S, C] values: blocks spread over the image each take a grid-stride share and write its absmax; then each
// block reduces those (a few hundred floats) to the image's absmax and scale, and writes its share as e4m3,
// with the fp8 rows' arithmetic (fused_cuda.cuh: fp8_row_scale, store_fp8), so the bytes equal the CPU
// reference's. Two launches and no atomics: the same bytes every run.
#include "fused_cuda.cuh"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace fluxbatch::ops::detail {
namespace {

constexpr int kThreads = 256;

struct HeadsArgs {
  int64_t tokens, channels;  // S, C
  int64_t ld_s, ld_b;        // element strides over S and B
  int64_t chunks;            // S * C / kVec
};

// Pass 1: block (x, b) -> partial[b * gridDim.x + x], the absmax of its share of image b.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) heads_absmax_kernel(const T* __restrict__ x, HeadsArgs a,
                                                                float* __restrict__ partial) {
  __shared__ float scratch[32];
  const T* image = x + int64_t(blockIdx.y) * a.ld_b;
  const int64_t per_row = a.channels / kVec;
  float local = 0.0f;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < a.chunks; i += int64_t(gridDim.x) * kThreads) {
    const int64_t s = i / per_row, c = (i % per_row) * kVec;
    float v[kVec];
    cuda::load<T, kVec, (kVec > 1)>(image + s * a.ld_s + c, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) local = fmaxf(local, fabsf(v[j]));
  }
  const float m = cuda::block_max(local, scratch);
  if (threadIdx.x == 0) partial[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = m;
}

// Pass 2: the image's absmax from the partials, then this block's share in e4m3 (data contiguous [B, S, C]).
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) heads_quantize_kernel(const T* __restrict__ x, HeadsArgs a,
                                                                  const float* __restrict__ partial, int parts,
                                                                  uint8_t* __restrict__ data, float* __restrict__ scale) {
  __shared__ float scratch[32];
  float local = 0.0f;
  for (int i = threadIdx.x; i < parts; i += kThreads) local = fmaxf(local, partial[int64_t(blockIdx.y) * parts + i]);
  const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(cuda::block_max(local, scratch));
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[blockIdx.y] = fp8.scale;
  const T* image = x + int64_t(blockIdx.y) * a.ld_b;
  uint8_t* out = data + int64_t(blockIdx.y) * a.tokens * a.channels;
  const int64_t per_row = a.channels / kVec;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < a.chunks; i += int64_t(gridDim.x) * kThreads) {
    const int64_t s = i / per_row, c = (i % per_row) * kVec;
    float v[kVec];
    cuda::load<T, kVec, (kVec > 1)>(image + s * a.ld_s + c, v);
    cuda::store_fp8<kVec, (kVec > 1)>(out + s * a.channels + c, v, fp8.inverse);
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, typename Storage>
void launch(const at::Tensor& x, at::Tensor& data, at::Tensor& scale) {
  const T* px = reinterpret_cast<const T*>(x.data_ptr<Storage>());
  const bool vector = x.size(2) % 8 == 0 && x.stride(1) % 8 == 0 && x.stride(0) % 8 == 0 && aligned(px, 16);
  const int vec = vector ? 8 : 1;
  const HeadsArgs a{x.size(1), x.size(2), x.stride(1), x.stride(0), x.size(1) * x.size(2) / vec};
  const int64_t images = x.size(0);
  // About two blocks an SM over the whole batch, at least one an image: the reductions stay short.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int parts = static_cast<int>(std::clamp<int64_t>(
      std::min<int64_t>((a.chunks + kThreads - 1) / kThreads, (2 * sms + images - 1) / images), 1, 1024));
  const at::Tensor partial = at::empty({images, parts}, x.options().dtype(at::kFloat));
  const dim3 grid(parts, static_cast<unsigned>(images));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  uint8_t* out = reinterpret_cast<uint8_t*>(data.data_ptr());
  if (vector) {
    heads_absmax_kernel<T, 8><<<grid, kThreads, 0, stream>>>(px, a, partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    heads_quantize_kernel<T, 8><<<grid, kThreads, 0, stream>>>(px, a, partial.data_ptr<float>(), parts, out,
                                                               scale.data_ptr<float>());
  } else {
    heads_absmax_kernel<T, 1><<<grid, kThreads, 0, stream>>>(px, a, partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    heads_quantize_kernel<T, 1><<<grid, kThreads, 0, stream>>>(px, a, partial.data_ptr<float>(), parts, out,
                                                               scale.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void quantize_fp8_heads_cuda(const at::Tensor& x, at::Tensor& data, at::Tensor& scale) {
  if (x.numel() == 0) {
    scale.fill_(1.0);
    return;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  switch (x.scalar_type()) {
    case at::kBFloat16: launch<__nv_bfloat16, at::BFloat16>(x, data, scale); break;
    case at::kHalf: launch<__half, at::Half>(x, data, scale); break;
    case at::kFloat: launch<float, float>(x, data, scale); break;
    default: TORCH_CHECK(false, "quantize_fp8_heads_cuda: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace fluxbatch::ops::detail
