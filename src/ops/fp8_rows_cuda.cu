// Per-row fp8 quantization of activations, one thread block per row: the row is read once into shared
// memory as fp32 (16-byte loads), its absmax reduced over the block, and every value divided by the row's
// scale and stored as one e4m3 byte (8-byte stores). Reads 2 bytes and writes 1 per bf16 value.
#include "fused_cuda.cuh"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fluxbatch::ops::detail {
namespace {

template <typename T, int kVec>
__global__ void quantize_fp8_rows_kernel(const T* __restrict__ x, int64_t k, uint8_t* __restrict__ data,
                                         float* __restrict__ scales) {
  extern __shared__ float row[];  // [K], then 32 floats of reduction scratch
  float* scratch = row + k;
  constexpr bool kVector = kVec > 1;
  const int64_t r = blockIdx.x;
  const T* in = x + r * k;
  const int64_t step = int64_t(blockDim.x) * kVec;
  float local = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < k; c += step) {
    float v[kVec];
    cuda::load<T, kVec, kVector>(in + c, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      row[c + i] = v[i];
      local = fmaxf(local, fabsf(v[i]));
    }
  }
  const float scale = cuda::fp8_row_scale(cuda::block_max(local, scratch));
  if (threadIdx.x == 0) scales[r] = scale;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < k; c += step) {
    float v[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = row[c + i];  // this thread's own values
    cuda::store_fp8<kVec, kVector>(data + r * k + c, v, scale);
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, typename Storage>
void launch(const at::Tensor& rows, at::Tensor& data, at::Tensor& scale) {
  const int64_t n = rows.size(0), k = rows.size(1);
  const T* x = reinterpret_cast<const T*>(rows.data_ptr<Storage>());
  uint8_t* out = reinterpret_cast<uint8_t*>(data.data_ptr());
  const bool vector = k % 8 == 0 && aligned(x, 16) && aligned(out, 8);
  const int vec = vector ? 8 : 1;
  const int64_t chunks = (k + vec - 1) / vec;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (chunks + 31) / 32 * 32)));
  const size_t shared = (k + 32) * sizeof(float);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto go = [&](auto kernel) {
    if (shared > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    }
    kernel<<<n, threads, shared, stream>>>(x, k, out, scale.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  vector ? go(quantize_fp8_rows_kernel<T, 8>) : go(quantize_fp8_rows_kernel<T, 1>);
}

}  // namespace

void quantize_fp8_rows_cuda(const at::Tensor& rows, at::Tensor& data, at::Tensor& scale) {
  if (rows.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(rows.device());
  switch (rows.scalar_type()) {
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(rows, data, scale);
      break;
    case at::kHalf:
      launch<__half, at::Half>(rows, data, scale);
      break;
    case at::kFloat:
      launch<float, float>(rows, data, scale);
      break;
    default:
      TORCH_CHECK(false, "quantize_fp8_rows_cuda: unsupported dtype ", rows.scalar_type());
  }
}

}  // namespace fluxbatch::ops::detail
