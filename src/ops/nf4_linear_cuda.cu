// Fused NF4 GEMV for one-row inputs (the modulation and embedding Linears at batch 1): a warp per
// output row, each lane taking 16 bytes of packed codes (32 weights) and the matching 32 inputs per
// step, fp32 accumulation, one warp reduction. The weights are rounded to the storage type exactly as
// the dequantize kernel writes them, so this equals dequantize + GEMM up to summation order.
#include "nf4_cuda.cuh"
#include "nf4_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fluxbatch::ops::detail {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kValuesPerLane = 32;

template <typename T>
__global__ void nf4_gemv_kernel(const T* __restrict__ x, const uint8_t* __restrict__ packed,
                                cuda::Nf4Absmax absmax, int64_t blocksize, const T* __restrict__ bias,
                                T* __restrict__ out, int64_t n_rows, int64_t k) {
  __shared__ float code[16];
  cuda::load_code_table(code);
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= n_rows) return;  // whole warps only: no shuffle below is left half-populated

  const uint4* row_codes = reinterpret_cast<const uint4*>(packed + row * k / 2);
  float acc = 0.0f;
  for (int64_t col = static_cast<int64_t>(lane) * kValuesPerLane; col < k; col += 32 * kValuesPerLane) {
    const uint4 bytes = __ldg(row_codes + col / kValuesPerLane);
    const float scale = absmax((row * k + col) / blocksize);
    alignas(16) T inputs[kValuesPerLane];
    constexpr int kLoads = kValuesPerLane * sizeof(T) / sizeof(uint4);
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      reinterpret_cast<uint4*>(inputs)[l] = __ldg(reinterpret_cast<const uint4*>(x + col) + l);
    }
#pragma unroll
    for (int b = 0; b < 16; ++b) {
      const uint32_t byte = cuda::byte_of(bytes, b);
      const float w_hi = cuda::to_float(cuda::from_float<T>(cuda::mul_ftz(code[byte >> 4], scale)));
      const float w_lo = cuda::to_float(cuda::from_float<T>(cuda::mul_ftz(code[byte & 0x0F], scale)));
      acc += w_hi * cuda::to_float(inputs[2 * b]);
      acc += w_lo * cuda::to_float(inputs[2 * b + 1]);
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, offset);
  if (lane == 0) {
    if (bias != nullptr) acc += cuda::to_float(bias[row]);
    out[row] = cuda::from_float<T>(acc);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, typename Storage>
void launch(const at::Tensor& x, const quant::Nf4Tensor& w, const at::Tensor& bias, at::Tensor& out) {
  const int64_t n_rows = w.shape[0];
  const int64_t k = w.shape[1];
  const int64_t grid = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const T* bias_ptr = bias.defined() ? reinterpret_cast<const T*>(bias.data_ptr<Storage>()) : nullptr;
  nf4_gemv_kernel<T><<<grid, kWarpsPerBlock * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const T*>(x.data_ptr<Storage>()), w.packed.data_ptr<uint8_t>(), cuda::make_absmax(w),
      w.blocksize, bias_ptr, reinterpret_cast<T*>(out.data_ptr<Storage>()), n_rows, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool nf4_gemv_cuda_supports(const at::Tensor& x, const quant::Nf4Tensor& w) {
  const at::ScalarType dtype = x.scalar_type();
  return w.shape.size() == 2 && x.numel() == w.shape[1] && x.is_contiguous() && dtype == w.dtype &&
         (dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat) && w.shape[1] % kValuesPerLane == 0 &&
         aligned16(x.data_ptr()) && aligned16(w.packed.data_ptr());
}

void nf4_gemv_cuda(const at::Tensor& x, const quant::Nf4Tensor& w, const at::Tensor& bias, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  switch (x.scalar_type()) {
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(x, w, b, out);
      break;
    case at::kHalf:
      launch<__half, at::Half>(x, w, b, out);
      break;
    case at::kFloat:
      launch<float, float>(x, w, b, out);
      break;
    default:
      TORCH_CHECK(false, "nf4_gemv_cuda: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace fluxbatch::ops::detail
