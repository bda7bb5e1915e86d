// Per-row fp8 quantization of activations, one thread block per row. Reads 2 bytes and writes 1 per bf16
// value. The usual rows (16-byte aligned, up to 32K values) stay in registers: each thread loads its
// 8-value chunks (up to kPer of them, all loads issued before any arithmetic, so the memory system has them
// in flight together), the block reduces the absmax, and each value is multiplied by the row's 448 / absmax and
// stored as one e4m3 byte (8-byte stores). Other rows (odd widths, misaligned, longer) go through shared memory.
// A row may be joined from two sources, [a | b], with GELU (tanh) applied to b on the way in: the single
// blocks' output projection reads [attention | GELU(MLP)] and the feed-forwards' second GEMM reads GELU of
// the first one's product, so neither the GELU pass nor the copy into a joined buffer is ever made.
// Both forms do the same fp32 operations in the same order, so they write the same bytes, and without GELU the
// bytes of the CPU reference.
#include "fused_cuda.cuh"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <type_traits>

namespace fluxbatch::ops::detail {
namespace {

// GELU (tanh approximation) rounded to T as at::gelu's output is: 0.5 x (1 + tanh(u)) written as x / (1 + e^(-2u)),
// the same function (0.5 (1 + tanh(u)) is the logistic of 2u) with the fast exponential and division: about
// ten instructions a value where tanhf takes some twenty-five (on the H100 this and the multiplication below took
// the kernel from 8.6 to 7.9 ms over a 1024x1024 forward's 76 calls). No cancellation for negative x
// (1 + tanh(u) would lose the digits there; e^(-2u) only grows). Within a few fp32
// ulps of at::gelu's value, so it rounds to the same T value but rarely (one in thousands of values, one T ulp
// apart), and an e4m3 byte differs rarer still ([cuda] test).
template <typename T>
__device__ __forceinline__ float gelu_tanh_rounded(float x) {
  constexpr float kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;
  constexpr float kKappa = 0.044715;
  const float inner = kBeta * (x + kKappa * x * x * x);
  return cuda::to_float(cuda::from_float<T>(__fdividef(x, 1.0f + __expf(-2.0f * inner))));
}

// One segment of a joined row into shared memory; returns this thread's running absmax.
template <typename T, int kVec, bool kGelu>
__device__ __forceinline__ float load_segment(const T* __restrict__ in, int64_t k, float* __restrict__ row,
                                              float local) {
  constexpr bool kVector = kVec > 1;
  const int64_t step = int64_t(blockDim.x) * kVec;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < k; c += step) {
    float v[kVec];
    cuda::load<T, kVec, kVector>(in + c, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      if constexpr (kGelu) v[i] = gelu_tanh_rounded<T>(v[i]);
      row[c + i] = v[i];
      local = fmaxf(local, fabsf(v[i]));
    }
  }
  return local;
}

// Row r of [a | b] (a: [R, ka] with rows lda values apart, b: [R, kb] with rows ldb apart, either width may
// be 0) -> data [R, ka + kb], scales [R].
template <typename T, int kVec, bool kGeluB>
__global__ void quantize_fp8_rows_kernel(const T* __restrict__ a, int64_t ka, int64_t lda, const T* __restrict__ b,
                                         int64_t kb, int64_t ldb, uint8_t* __restrict__ data,
                                         float* __restrict__ scales) {
  extern __shared__ float row[];  // [ka + kb], then 32 floats of reduction scratch
  const int64_t k = ka + kb;
  float* scratch = row + k;
  constexpr bool kVector = kVec > 1;
  const int64_t r = blockIdx.x;
  float local = 0.0f;
  if (ka > 0) local = load_segment<T, kVec, false>(a + r * lda, ka, row, local);
  if (kb > 0) local = load_segment<T, kVec, kGeluB>(b + r * ldb, kb, row + ka, local);
  // block_max synchronises the block, so every thread then reads values other threads wrote.
  const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(cuda::block_max(local, scratch));
  if (threadIdx.x == 0) scales[r] = fp8.scale;
  const int64_t step = int64_t(blockDim.x) * kVec;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < k; c += step) {
    float v[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = row[c + i];
    cuda::store_fp8<kVec, kVector>(data + r * k + c, v, fp8.inverse);
  }
}

// The register form: row r of [a | b] with ka and kb multiples of 8 and 16-byte aligned sources, its
// (ka + kb) / 8 chunks spread over the block, chunk c = threadIdx.x + j * blockDim.x for j < kPer. The chunks stay
// packed as stored (cuda::Packed8; GELU's output is rounded to T anyway, so it goes back in T exactly): a bf16
// row of 15,360 values (kPer 4) needs about 32 registers a thread, so four blocks of up to 512 threads share an
// SM, twice the rows in flight of the fp32 registers this kernel held before.
template <typename T, int kPer>
constexpr int quantize_min_blocks() {
  return kPer >= 8 ? 1 : (sizeof(T) == 2 ? 4 : 2);
}
// a given as e4m3 with one scale an image (quantize_fp8_rows_fp8a_cuda): the attention output of fp8 attention.
struct Fp8Source {
  const uint8_t* data = nullptr;  // [R, ka], rows lda bytes apart
  const float* scale = nullptr;   // [R / rows_per_image]
  int64_t rows_per_image = 1;
};

// Eight e4m3 values of an fp8 source times its image's scale, rounded to T (exact widening, one fp32 product).
template <typename T>
__device__ __forceinline__ void load_fp8_scaled(cuda::Packed8<T>& v, const uint8_t* __restrict__ p, float scale) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const uint32_t words[2] = {u.x, u.y};
#pragma unroll
  for (int pair = 0; pair < 4; ++pair) {
    const uint32_t word = words[pair / 2] >> (16 * (pair % 2));
    const float lo = __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(word & 0xFFu), __NV_E4M3)));
    const float hi = __half2float(__half(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>((word >> 8) & 0xFFu), __NV_E4M3)));
    v.set_pair(pair, __fmul_rn(lo, scale), __fmul_rn(hi, scale));
  }
}

template <typename T, int kPer, bool kGeluB, bool kFp8A>
__global__ void __launch_bounds__(512, quantize_min_blocks<T, kPer>()) quantize_fp8_rows_reg_kernel(const T* __restrict__ a, int64_t ka, int64_t lda, const T* __restrict__ b,
                                             int64_t kb, int64_t ldb, uint8_t* __restrict__ data, float* __restrict__ scales,
                                             Fp8Source a8) {
  __shared__ float scratch[32];
  // Row pointers once and 32-bit chunk indices (a row has at most 32K values): registers go to the values.
  const int64_t r = blockIdx.x;
  const T* __restrict__ row_a = a + r * lda;
  const T* __restrict__ row_b = b + r * ldb;
  const int chunks_a = static_cast<int>(ka / 8), chunks = chunks_a + static_cast<int>(kb / 8);
  float a_scale = 1.0f;
  if constexpr (kFp8A) a_scale = a8.scale[r / a8.rows_per_image];
  cuda::Packed8<T> v[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int c = static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    if (c < chunks_a) {
      if constexpr (kFp8A) {
        load_fp8_scaled<T>(v[j], a8.data + r * lda + c * 8, a_scale);
      } else {
        v[j].load(row_a + c * 8);
      }
    } else if (c < chunks) {
      v[j].load(row_b + (c - chunks_a) * 8);
    }
  }
  float local = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int c = static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    if (c >= chunks) continue;
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      float lo = v[j].get(i), hi = v[j].get(i + 1);
      if constexpr (kGeluB) {
        if (c >= chunks_a) {
          lo = gelu_tanh_rounded<T>(lo);
          hi = gelu_tanh_rounded<T>(hi);
          v[j].set_pair(i / 2, lo, hi);
        }
      }
      local = fmaxf(local, fmaxf(fabsf(lo), fabsf(hi)));
    }
  }
  const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(cuda::block_max(local, scratch));
  if (threadIdx.x == 0) scales[r] = fp8.scale;
  uint8_t* __restrict__ out = data + r * (ka + kb);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int c = static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    if (c >= chunks) continue;
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = v[j].get(i);
    cuda::store_fp8<8, true>(out + c * 8, x, fp8.inverse);
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// a8 given: a is that e4m3 source (a undefined; ka from a8's tensor) and only the register form runs; returns
// whether it ran.
template <typename T, typename Storage>
bool launch(const at::Tensor& a, const at::Tensor& b, bool gelu_b, at::Tensor& data, at::Tensor& scale,
            const at::Tensor* a8 = nullptr, const at::Tensor* a8_scale = nullptr, int64_t rows_per_image = 1) {
  const at::Tensor& a_any = a8 != nullptr ? *a8 : a;
  const int64_t ka = a_any.defined() ? a_any.size(1) : 0, kb = b.defined() ? b.size(1) : 0, k = ka + kb;
  const int64_t lda = a_any.defined() ? a_any.stride(0) : 0, ldb = b.defined() ? b.stride(0) : 0;
  const int64_t n = data.size(0);
  const T* pa = ka > 0 && a8 == nullptr ? reinterpret_cast<const T*>(a.data_ptr<Storage>()) : nullptr;
  const T* pb = kb > 0 ? reinterpret_cast<const T*>(b.data_ptr<Storage>()) : nullptr;
  Fp8Source source;
  if (a8 != nullptr) {
    source.data = reinterpret_cast<const uint8_t*>(a8->data_ptr());
    source.scale = a8_scale->data_ptr<float>();
    source.rows_per_image = rows_per_image;
  }
  uint8_t* out = reinterpret_cast<uint8_t*>(data.data_ptr());
  const bool vector = ka % 8 == 0 && kb % 8 == 0 && lda % 8 == 0 && ldb % 8 == 0 &&
                      (pa == nullptr || aligned(pa, 16)) && (pb == nullptr || aligned(pb, 16)) && aligned(out, 8) &&
                      (source.data == nullptr || aligned(source.data, 8));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cuda::RegisterRows shape = vector ? cuda::register_rows(k / 8, 8) : cuda::RegisterRows{};
  if (shape.per > 0) {
    auto reg = [&](auto kernel) {
      kernel<<<n, shape.threads, 0, stream>>>(pa, ka, lda, pb, kb, ldb, out, scale.data_ptr<float>(), source);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto by_per = [&](auto gelu, auto fp8a) {
      constexpr bool kGelu = decltype(gelu)::value, kFp8A = decltype(fp8a)::value;
      switch (shape.per) {
        case 1: return reg(quantize_fp8_rows_reg_kernel<T, 1, kGelu, kFp8A>);
        case 2: return reg(quantize_fp8_rows_reg_kernel<T, 2, kGelu, kFp8A>);
        case 4: return reg(quantize_fp8_rows_reg_kernel<T, 4, kGelu, kFp8A>);
        default: return reg(quantize_fp8_rows_reg_kernel<T, 8, kGelu, kFp8A>);
      }
    };
    if (a8 != nullptr) {
      gelu_b ? by_per(std::true_type{}, std::true_type{}) : by_per(std::false_type{}, std::true_type{});
    } else {
      gelu_b ? by_per(std::true_type{}, std::false_type{}) : by_per(std::false_type{}, std::false_type{});
    }
    return true;
  }
  if (a8 != nullptr) return false;
  const int vec = vector ? 8 : 1;
  const int64_t chunks = (std::max(ka, kb) + vec - 1) / vec;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (chunks + 31) / 32 * 32)));
  const size_t shared = (k + 32) * sizeof(float);
  auto go = [&](auto kernel) {
    if (shared > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    }
    kernel<<<n, threads, shared, stream>>>(pa, ka, lda, pb, kb, ldb, out, scale.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (gelu_b) {
    vector ? go(quantize_fp8_rows_kernel<T, 8, true>) : go(quantize_fp8_rows_kernel<T, 1, true>);
  } else {
    vector ? go(quantize_fp8_rows_kernel<T, 8, false>) : go(quantize_fp8_rows_kernel<T, 1, false>);
  }
  return true;
}

}  // namespace

void quantize_fp8_rows_cuda(const at::Tensor& a, const at::Tensor& b, bool gelu_b, at::Tensor& data,
                            at::Tensor& scale) {
  if (data.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(data.device());
  switch ((a.defined() ? a : b).scalar_type()) {
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(a, b, gelu_b, data, scale);
      break;
    case at::kHalf:
      launch<__half, at::Half>(a, b, gelu_b, data, scale);
      break;
    case at::kFloat:
      launch<float, float>(a, b, gelu_b, data, scale);
      break;
    default:
      TORCH_CHECK(false, "quantize_fp8_rows_cuda: unsupported dtype ", (a.defined() ? a : b).scalar_type());
  }
}

bool quantize_fp8_rows_fp8a_cuda(const at::Tensor& a, const at::Tensor& a_scale, int64_t rows_per_image,
                                 const at::Tensor& b, bool gelu_b, at::Tensor& data, at::Tensor& scale) {
  if (data.numel() == 0) return true;
  const c10::cuda::CUDAGuard guard(data.device());
  switch (b.scalar_type()) {
    case at::kBFloat16:
      return launch<__nv_bfloat16, at::BFloat16>(at::Tensor(), b, gelu_b, data, scale, &a, &a_scale, rows_per_image);
    case at::kHalf:
      return launch<__half, at::Half>(at::Tensor(), b, gelu_b, data, scale, &a, &a_scale, rows_per_image);
    case at::kFloat:
      return launch<float, float>(at::Tensor(), b, gelu_b, data, scale, &a, &a_scale, rows_per_image);
    default:
      return false;
  }
}

}  // namespace fluxbatch::ops::detail
