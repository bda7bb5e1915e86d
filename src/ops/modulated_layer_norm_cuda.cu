// Modulated LayerNorm, optionally after the gated residual update, one thread block per token row.
// Each thread takes 8-value chunks of the row (16-byte accesses; one chunk per thread at C = 3072 with
// 384 threads), and the block computes mean and variance in two passes over the row (no E[x^2] - E[x]^2
// cancellation). Rows up to 8192 values keep the row in registers with every load issued up front (the
// register form); others keep it in shared memory as fp32. Memory traffic is the floor: each input read
// once, each output written once.
#include "fused_cuda.cuh"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>

namespace fluxbatch::ops::detail {
namespace {

template <typename T>
struct RowArgs {
  const T* x;
  int64_t x_sb, x_ss;  // element strides over B and S
  T* residual;         // contiguous [B, S, C], or null
  const T* gate;
  int64_t gate_sb;
  const T* shift;
  int64_t shift_sb;
  const T* scale;
  int64_t scale_sb;
  T* out;  // contiguous [B, S, C]
  uint8_t* out_fp8;  // or, with kFp8Out: e4m3 [B, S, C] ...
  float* out_scale;  // ... and one fp32 scale per row [B, S]
  int64_t tokens, channels;
  float eps;
};

template <typename T, int kVec, bool kResidual, bool kFp8Out>
__global__ void modulated_layer_norm_kernel(RowArgs<T> a) {
  extern __shared__ float row[];  // [C] fp32, then 32 floats of reduction scratch
  float* scratch = row + a.channels;
  constexpr bool kVector = kVec > 1;
  const int64_t r = blockIdx.x;
  const int64_t b = r / a.tokens, s = r % a.tokens;
  const T* x = a.x + b * a.x_sb + s * a.x_ss;
  T* res = kResidual ? a.residual + r * a.channels : nullptr;
  const int64_t step = int64_t(blockDim.x) * kVec;

  float sum = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < a.channels; c += step) {
    float v[kVec];
    cuda::load<T, kVec, kVector>(x + c, v);
    if constexpr (kResidual) {
      // x + gate * y with one rounding, stored: the new residual stream, and what the norm sees.
      float y[kVec], g[kVec];
      cuda::load<T, kVec, kVector>(res + c, y);
      cuda::load<T, kVec, kVector>(a.gate + b * a.gate_sb + c, g);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] = cuda::round_to<T>(fmaf(g[i], y[i], v[i]));
      cuda::store<T, kVec, kVector>(res + c, v);
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      row[c + i] = v[i];
      sum += v[i];
    }
  }
  const float mean = cuda::block_sum(sum, scratch) / float(a.channels);
  float squares = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < a.channels; c += step) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const float d = row[c + i] - mean;  // this thread's own values: no barrier needed
      squares += d * d;
    }
  }
  const float rstd = rsqrtf(cuda::block_sum(squares, scratch) / float(a.channels) + a.eps);
  float absmax = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * kVec; c < a.channels; c += step) {
    float sh[kVec], sc[kVec], o[kVec];
    cuda::load<T, kVec, kVector>(a.shift + b * a.shift_sb + c, sh);
    cuda::load<T, kVec, kVector>(a.scale + b * a.scale_sb + c, sc);
#pragma unroll
    for (int i = 0; i < kVec; ++i) o[i] = fmaf((row[c + i] - mean) * rstd, 1.0f + sc[i], sh[i]);
    if constexpr (kFp8Out) {
      // Kept (in place of the input, this thread's own values) until the row's scale is known.
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        row[c + i] = o[i];
        absmax = fmaxf(absmax, fabsf(o[i]));
      }
    } else {
      cuda::store<T, kVec, kVector>(a.out + r * a.channels + c, o);
    }
  }
  if constexpr (kFp8Out) {
    // The GEMM input quantized per row here rather than in a pass of its own: the fp32 values are
    // rounded once, to e4m3, never to T.
    const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(cuda::block_max(absmax, scratch));
    if (threadIdx.x == 0) a.out_scale[r] = fp8.scale;
    for (int64_t c = int64_t(threadIdx.x) * kVec; c < a.channels; c += step) {
      float o[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) o[i] = row[c + i];
      cuda::store_fp8<kVec, kVector>(a.out_fp8 + r * a.channels + c, o, fp8.inverse);
    }
  }
}

// The register form of the kernel above for rows of at most 8192 values (16-byte aligned, C a multiple of 8):
// chunk c = threadIdx.x + j * blockDim.x for j < kPer, as above, but every load (x, the residual and gate,
// shift and scale, none of which depends on the row's statistics) is issued before the first reduction and
// the row stays in registers. The fp32 operations are the same and in the same order, so are the results.
template <typename T, int kPer, bool kResidual, bool kFp8Out>
__global__ void __launch_bounds__(512, 2) modulated_layer_norm_reg_kernel(RowArgs<T> a) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t b = r / a.tokens, s = r % a.tokens;
  const T* x = a.x + b * a.x_sb + s * a.x_ss;
  T* res = kResidual ? a.residual + r * a.channels : nullptr;
  const int64_t chunks = a.channels / 8;
  float v[kPer][8], sh[kPer][8], sc[kPer][8];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t c = (threadIdx.x + int64_t(j) * blockDim.x) * 8;
    if (c >= a.channels) continue;
    cuda::load_vec<T, 8>(x + c, v[j]);
    if constexpr (kResidual) {
      float y[8], g[8];
      cuda::load_vec<T, 8>(res + c, y);
      cuda::load_vec<T, 8>(a.gate + b * a.gate_sb + c, g);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[j][i] = cuda::round_to<T>(fmaf(g[i], y[i], v[j][i]));
      cuda::store_vec<T, 8>(res + c, v[j]);
    }
    cuda::load_vec<T, 8>(a.shift + b * a.shift_sb + c, sh[j]);
    cuda::load_vec<T, 8>(a.scale + b * a.scale_sb + c, sc[j]);
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (threadIdx.x + int64_t(j) * blockDim.x >= chunks) continue;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += v[j][i];
  }
  const float mean = cuda::block_sum(sum, scratch) / float(a.channels);
  float squares = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (threadIdx.x + int64_t(j) * blockDim.x >= chunks) continue;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float d = v[j][i] - mean;
      squares += d * d;
    }
  }
  const float rstd = rsqrtf(cuda::block_sum(squares, scratch) / float(a.channels) + a.eps);
  float absmax = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t c = (threadIdx.x + int64_t(j) * blockDim.x) * 8;
    if (c >= a.channels) continue;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[j][i] = fmaf((v[j][i] - mean) * rstd, 1.0f + sc[j][i], sh[j][i]);
      absmax = fmaxf(absmax, fabsf(v[j][i]));
    }
    if constexpr (!kFp8Out) cuda::store_vec<T, 8>(a.out + r * a.channels + c, v[j]);
  }
  if constexpr (kFp8Out) {
    const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(cuda::block_max(absmax, scratch));
    if (threadIdx.x == 0) a.out_scale[r] = fp8.scale;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t c = (threadIdx.x + int64_t(j) * blockDim.x) * 8;
      if (c < a.channels) cuda::store_fp8<8, true>(a.out_fp8 + r * a.channels + c, v[j], fp8.inverse);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, typename Storage>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr<Storage>());
}

template <typename T, typename Storage>
void launch(const at::Tensor& x, at::Tensor* residual, const at::Tensor& gate, const at::Tensor& shift,
            const at::Tensor& scale, double eps, at::Tensor* out, ops::Fp8Rows* out_fp8) {
  RowArgs<T> a{};
  a.x = ptr<T, Storage>(x);
  a.x_sb = x.stride(0);
  a.x_ss = x.stride(1);
  a.residual = residual ? reinterpret_cast<T*>(residual->data_ptr<Storage>()) : nullptr;
  a.gate = residual ? ptr<T, Storage>(gate) : nullptr;
  a.gate_sb = residual ? gate.stride(0) : 0;
  a.shift = ptr<T, Storage>(shift);
  a.shift_sb = shift.stride(0);
  a.scale = ptr<T, Storage>(scale);
  a.scale_sb = scale.stride(0);
  a.out = out ? reinterpret_cast<T*>(out->data_ptr<Storage>()) : nullptr;
  a.out_fp8 = out_fp8 ? reinterpret_cast<uint8_t*>(out_fp8->data.data_ptr()) : nullptr;
  a.out_scale = out_fp8 ? out_fp8->scale.data_ptr<float>() : nullptr;
  a.tokens = x.size(1);
  a.channels = x.size(2);
  a.eps = static_cast<float>(eps);

  // 16-byte accesses need every row start aligned: pointers and row strides in whole 8-value chunks.
  bool vector = a.channels % 8 == 0 && a.x_sb % 8 == 0 && a.x_ss % 8 == 0 && a.shift_sb % 8 == 0 &&
                a.scale_sb % 8 == 0 && aligned16(a.x) && aligned16(a.shift) && aligned16(a.scale) &&
                (a.out == nullptr || aligned16(a.out)) &&
                (a.out_fp8 == nullptr || reinterpret_cast<uintptr_t>(a.out_fp8) % 8 == 0);
  if (residual) vector = vector && a.gate_sb % 8 == 0 && aligned16(a.gate) && aligned16(a.residual);
  const int64_t rows = x.size(0) * x.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // The register form: one or two chunks a thread (three rows of values each: x, shift, scale).
  const cuda::RegisterRows shape = vector ? cuda::register_rows(a.channels / 8, 2) : cuda::RegisterRows{};
  if (shape.per > 0) {
    auto reg = [&](auto kernel) {
      kernel<<<rows, shape.threads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    auto by_per = [&](auto residual, auto fp8) {
      constexpr bool kRes = decltype(residual)::value, kFp8 = decltype(fp8)::value;
      shape.per == 1 ? reg(modulated_layer_norm_reg_kernel<T, 1, kRes, kFp8>)
                     : reg(modulated_layer_norm_reg_kernel<T, 2, kRes, kFp8>);
    };
    if (out_fp8) {
      residual ? by_per(std::true_type{}, std::true_type{}) : by_per(std::false_type{}, std::true_type{});
    } else if (residual) {
      by_per(std::true_type{}, std::false_type{});
    } else {
      by_per(std::false_type{}, std::false_type{});
    }
    return;
  }
  const int vec = vector ? 8 : 1;
  const int64_t chunks = (a.channels + vec - 1) / vec;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (chunks + 31) / 32 * 32)));
  const size_t shared = (a.channels + 32) * sizeof(float);
  auto go = [&](auto kernel) {
    if (shared > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
    }
    kernel<<<rows, threads, shared, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (out_fp8 && residual) {
    vector ? go(modulated_layer_norm_kernel<T, 8, true, true>) : go(modulated_layer_norm_kernel<T, 1, true, true>);
  } else if (out_fp8) {
    vector ? go(modulated_layer_norm_kernel<T, 8, false, true>) : go(modulated_layer_norm_kernel<T, 1, false, true>);
  } else if (residual) {
    vector ? go(modulated_layer_norm_kernel<T, 8, true, false>) : go(modulated_layer_norm_kernel<T, 1, true, false>);
  } else {
    vector ? go(modulated_layer_norm_kernel<T, 8, false, false>) : go(modulated_layer_norm_kernel<T, 1, false, false>);
  }
}

}  // namespace

void modulated_layer_norm_cuda(const at::Tensor& x, at::Tensor* residual, const at::Tensor& gate,
                               const at::Tensor& shift, const at::Tensor& scale, double eps, at::Tensor* out,
                               ops::Fp8Rows* out_fp8) {
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  switch (x.scalar_type()) {
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(x, residual, gate, shift, scale, eps, out, out_fp8);
      break;
    case at::kHalf:
      launch<__half, at::Half>(x, residual, gate, shift, scale, eps, out, out_fp8);
      break;
    case at::kFloat:
      launch<float, float>(x, residual, gate, shift, scale, eps, out, out_fp8);
      break;
    default:
      TORCH_CHECK(false, "modulated_layer_norm_cuda: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace fluxbatch::ops::detail
