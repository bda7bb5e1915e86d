// NF4 dequantization kernel: memory-bound, so each thread moves one 16-byte load of packed codes
// (32 values, always inside one absmax block since blocksize is a multiple of 32) to 32 outputs
// written as 16-byte stores. Values and rounding are bnb's kDequantizeBlockwise<T, ..., NF4>.
#include "nf4_cuda.cuh"
#include "nf4_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fluxbatch::ops::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kValuesPerThread = 32;

template <typename T>
__global__ void nf4_dequantize_vec_kernel(const uint4* __restrict__ packed, cuda::Nf4Absmax absmax,
                                          int64_t n_chunks, int64_t blocksize, T* __restrict__ out) {
  __shared__ float code[16];
  cuda::load_code_table(code);
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (chunk >= n_chunks) return;

  const uint4 bytes = __ldg(packed + chunk);
  const float scale = absmax(chunk * kValuesPerThread / blocksize);
  alignas(16) T values[kValuesPerThread];
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    const uint32_t byte = cuda::byte_of(bytes, k);
    values[2 * k] = cuda::from_float<T>(cuda::mul_ftz(code[byte >> 4], scale));  // first value: high nibble
    values[2 * k + 1] = cuda::from_float<T>(cuda::mul_ftz(code[byte & 0x0F], scale));
  }
  constexpr int kStores = kValuesPerThread * sizeof(T) / sizeof(uint4);
  uint4* dst = reinterpret_cast<uint4*>(out + chunk * kValuesPerThread);
#pragma unroll
  for (int s = 0; s < kStores; ++s) dst[s] = reinterpret_cast<const uint4*>(values)[s];
}

// One value per thread: the tail after the last full 32-value chunk, and unaligned buffers.
template <typename T>
__global__ void nf4_dequantize_scalar_kernel(const uint8_t* __restrict__ packed, cuda::Nf4Absmax absmax,
                                             int64_t begin, int64_t n, int64_t blocksize, T* __restrict__ out) {
  __shared__ float code[16];
  cuda::load_code_table(code);
  const int64_t i = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t byte = __ldg(packed + i / 2);
  const uint32_t nibble = (i & 1) ? (byte & 0x0F) : (byte >> 4);
  out[i] = cuda::from_float<T>(cuda::mul_ftz(code[nibble], absmax(i / blocksize)));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t grid_for(int64_t items) { return (items + kThreads - 1) / kThreads; }

template <typename T>
void launch(const quant::Nf4Tensor& w, T* out) {
  const int64_t n = w.numel();
  const uint8_t* packed = w.packed.data_ptr<uint8_t>();
  const cuda::Nf4Absmax absmax = cuda::make_absmax(w);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool vectorized = aligned16(packed) && aligned16(out);
  const int64_t n_chunks = vectorized ? n / kValuesPerThread : 0;
  if (n_chunks > 0) {
    nf4_dequantize_vec_kernel<T><<<grid_for(n_chunks), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(packed), absmax, n_chunks, w.blocksize, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t begin = n_chunks * kValuesPerThread;
  if (begin < n) {
    nf4_dequantize_scalar_kernel<T><<<grid_for(n - begin), kThreads, 0, stream>>>(packed, absmax, begin, n,
                                                                                 w.blocksize, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void nf4_dequantize_cuda(const quant::Nf4Tensor& w, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(w.device());
  switch (out.scalar_type()) {
    case at::kBFloat16:
      launch(w, reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()));
      break;
    case at::kHalf:
      launch(w, reinterpret_cast<__half*>(out.data_ptr<at::Half>()));
      break;
    case at::kFloat:
      launch(w, out.data_ptr<float>());
      break;
    default:
      TORCH_CHECK(false, "nf4_dequantize_cuda: unsupported output dtype ", out.scalar_type());
  }
}

}  // namespace fluxbatch::ops::detail
