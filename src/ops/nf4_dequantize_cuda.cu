// NF4 dequantization kernel. Memory-bound: 0.5 byte read per value, 2 (bf16) written. Each thread
// turns one 4-byte word of packed codes (8 values, always inside one absmax block since blocksize is a
// multiple of 8) into one 16-byte store of bf16, so both the warp's loads (128 contiguous bytes) and its
// stores (512 contiguous bytes) are fully coalesced; every thread handles kWordsPerThread words of a
// tile, loads first, to keep enough bytes in flight. (A 16-byte load per thread with 64 contiguous
// bytes stored per thread reached only ~60% of copy bandwidth: the warp's stores were strided.)
// Values and rounding are bnb's kDequantizeBlockwise<T, ..., NF4>.
#include "nf4_cuda.cuh"
#include "nf4_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fluxbatch::ops::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWordsPerThread = 4;
constexpr int kValuesPerWord = 8;
constexpr int64_t kWordsPerTile = int64_t(kThreads) * kWordsPerThread;

template <typename T>
__device__ __forceinline__ void store_word(T* out, int64_t word, uint32_t codes, float scale, const float* code) {
  alignas(16) T values[kValuesPerWord];
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // bytes in memory order; the first value of a byte is its high nibble
    const uint32_t byte = (codes >> (8 * k)) & 0xFFu;
    values[2 * k] = cuda::from_float<T>(cuda::mul_ftz(code[byte >> 4], scale));
    values[2 * k + 1] = cuda::from_float<T>(cuda::mul_ftz(code[byte & 0x0F], scale));
  }
  constexpr int kStores = kValuesPerWord * sizeof(T) / sizeof(uint4);
  uint4* dst = reinterpret_cast<uint4*>(out + word * kValuesPerWord);
#pragma unroll
  for (int s = 0; s < kStores; ++s) dst[s] = reinterpret_cast<const uint4*>(values)[s];
}

// packed: n_words 4-byte words -> out: n_words * 8 values.
template <typename T>
__global__ void __launch_bounds__(kThreads) nf4_dequantize_vec_kernel(const uint32_t* __restrict__ packed,
                                                                      cuda::Nf4Absmax absmax, int64_t n_words,
                                                                      int64_t blocksize, T* __restrict__ out) {
  __shared__ float code[16];
  cuda::load_code_table(code);
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kWordsPerTile + threadIdx.x;
  uint32_t codes[kWordsPerThread];
#pragma unroll
  for (int j = 0; j < kWordsPerThread; ++j) {
    const int64_t word = tile + int64_t(j) * kThreads;
    codes[j] = word < n_words ? __ldg(packed + word) : 0u;
  }
#pragma unroll
  for (int j = 0; j < kWordsPerThread; ++j) {
    const int64_t word = tile + int64_t(j) * kThreads;
    if (word < n_words) store_word(out, word, codes[j], absmax(word * kValuesPerWord / blocksize), code);
  }
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

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int64_t grid_for(int64_t items) { return (items + kThreads - 1) / kThreads; }

template <typename T>
void launch(const quant::Nf4Tensor& w, T* out) {
  const int64_t n = w.numel();
  const uint8_t* packed = w.packed.data_ptr<uint8_t>();
  const cuda::Nf4Absmax absmax = cuda::make_absmax(w);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool vectorized = aligned(packed, 4) && aligned(out, 16);
  const int64_t n_words = vectorized ? n / kValuesPerWord : 0;
  if (n_words > 0) {
    const int64_t tiles = (n_words + kWordsPerTile - 1) / kWordsPerTile;
    nf4_dequantize_vec_kernel<T><<<tiles, kThreads, 0, stream>>>(reinterpret_cast<const uint32_t*>(packed), absmax,
                                                                n_words, w.blocksize, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t begin = n_words * kValuesPerWord;
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
