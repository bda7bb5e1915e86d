// RMSNorm per head + RoPE, in place. A head row of D values is handled by G = D / 8 consecutive lanes of
// one warp, 8 values (4 rotation pairs) each: one 16-byte load, a G-lane shuffle reduction for the mean
// square, the norm weight and the RoPE angles applied in fp32, one 16-byte store. The cos / sin rows
// ([S, D] fp32) are shared by every head of a token and stay in cache.
// The fp8 form (fp8 attention) writes e4m3 into a separate tensor instead, with one scale known before any
// value is seen: |x / rms(x)| <= sqrt(D) for every value of a head row, the weight multiplies it by at most
// max|w|, and RoPE rotates pairs, so sqrt(D) * max|w| bounds every output and needs no pass over the data.
// e4m3 is a floating format, so the loose bound costs no precision, only range at the bottom (values below
// about 1/30,000 of it become subnormal).
#include "fused_cuda.cuh"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <type_traits>

namespace fluxbatch::ops::detail {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct RopeArgs {
  T* x;
  int64_t x_sb, x_ss;  // element strides over B and S
  int64_t tokens, heads, text_len, head_rows;
  const T* w_text;   // [D] or null
  const T* w_image;  // [D] or null
  const float* cos;  // [S, D]
  const float* sin;
  float eps;
  // fp8 form: out8 [B, S, H * D] (element strides out_sb, out_ss), out_scale [B], sqrt_d = sqrt(D) in fp32.
  uint8_t* out8;
  int64_t out_sb, out_ss;
  float* out_scale;
  float sqrt_d;
};

template <typename T, int G, bool kFp8>
__global__ void __launch_bounds__(kThreads) rms_norm_rope_kernel(RopeArgs<T> a) {
  constexpr int D = 8 * G;
  const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  // Lanes past the last head row still run the shuffles (whole groups of G), they only skip memory.
  const int64_t row = min(thread / G, a.head_rows - 1);
  const bool active = thread / G < a.head_rows;
  const int lane = threadIdx.x % G;
  const int64_t h = row % a.heads, bs = row / a.heads;
  const int64_t s = bs % a.tokens, b = bs / a.tokens;
  T* p = a.x + b * a.x_sb + s * a.x_ss + h * D + lane * 8;

  float v[8];
  cuda::load_vec<T, 8>(p, v);
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) squares += v[i] * v[i];
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xFFFFFFFFu, squares, offset, G);
  const float rstd = rsqrtf(squares / float(D) + a.eps);

  const T* weight = s < a.text_len ? a.w_text : a.w_image;
  float w[8];
  if (weight != nullptr) {
    cuda::load_vec<T, 8>(weight + lane * 8, w);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = 1.0f;
  }
  float c[8], sn[8];
  cuda::load_vec<float, 8>(a.cos + s * D + lane * 8, c);
  cuda::load_vec<float, 8>(a.sin + s * D + lane * 8, sn);
  float o[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float re = v[2 * j] * rstd * w[2 * j];
    const float im = v[2 * j + 1] * rstd * w[2 * j + 1];
    // (re, im) * (cos, sin): x * cos + (-im, re) * sin, as the reference pairs them.
    o[2 * j] = re * c[2 * j] - im * sn[2 * j];
    o[2 * j + 1] = im * c[2 * j + 1] + re * sn[2 * j + 1];
  }
  if constexpr (kFp8) {
    // The bound over both streams' weights (one scale for the image's whole joint sequence), the same in
    // every group of G lanes.
    float wmax = 1.0f;
    if (a.w_text != nullptr || a.w_image != nullptr) {
      wmax = 0.0f;
      const T* weights[2] = {a.w_text, a.w_image};
      for (const T* wt : weights) {
        if (wt == nullptr) continue;
        float u[8];
        cuda::load_vec<T, 8>(wt + lane * 8, u);
#pragma unroll
        for (int i = 0; i < 8; ++i) wmax = fmaxf(wmax, fabsf(u[i]));
      }
#pragma unroll
      for (int offset = G / 2; offset > 0; offset /= 2) wmax = fmaxf(wmax, __shfl_xor_sync(0xFFFFFFFFu, wmax, offset, G));
    }
    const cuda::Fp8RowScale fp8 = cuda::fp8_row_scale(__fmul_rn(wmax, a.sqrt_d));
    if (active) {
      cuda::store_fp8<8, true>(a.out8 + b * a.out_sb + s * a.out_ss + h * D + lane * 8, o, fp8.inverse);
      if (s == 0 && h == 0 && lane == 0) a.out_scale[b] = fp8.scale;
    }
  } else {
    if (active) cuda::store_vec<T, 8>(p, o);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, typename Storage>
const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<const T*>(t.data_ptr<Storage>()) : nullptr;
}

template <typename T, typename Storage>
void launch(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
            int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps, at::Tensor* out8,
            at::Tensor* out_scale) {
  RopeArgs<T> a{};
  a.x = reinterpret_cast<T*>(const_cast<Storage*>(x.const_data_ptr<Storage>()));  // read only in the fp8 form
  a.x_sb = x.stride(0);
  a.x_ss = x.stride(1);
  a.tokens = x.size(1);
  a.heads = x.size(2) / head_dim;
  a.text_len = text_len;
  a.head_rows = x.size(0) * a.tokens * a.heads;
  a.w_text = optional_ptr<T, Storage>(w_text);
  a.w_image = optional_ptr<T, Storage>(w_image);
  a.cos = cos.data_ptr<float>();
  a.sin = sin.data_ptr<float>();
  a.eps = static_cast<float>(eps);
  const bool fp8 = out8 != nullptr;
  if (fp8) {
    a.out8 = reinterpret_cast<uint8_t*>(out8->data_ptr());
    a.out_sb = out8->stride(0);
    a.out_ss = out8->stride(1);
    a.out_scale = out_scale->data_ptr<float>();
    a.sqrt_d = std::sqrt(static_cast<float>(head_dim));
    TORCH_CHECK(reinterpret_cast<uintptr_t>(a.out8) % 8 == 0 && a.out_sb % 8 == 0 && a.out_ss % 8 == 0,
                "rms_norm_rope_cuda: fp8 rows must be 8-byte aligned");
  }
  TORCH_CHECK(aligned16(a.x) && a.x_sb % 8 == 0 && a.x_ss % 8 == 0 && aligned16(a.cos) && aligned16(a.sin) &&
                  (!a.w_text || aligned16(a.w_text)) && (!a.w_image || aligned16(a.w_image)),
              "rms_norm_rope_cuda: rows must be 16-byte aligned");
  const int g = static_cast<int>(head_dim / 8);
  const int64_t blocks = (a.head_rows * g + kThreads - 1) / kThreads;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto go = [&](auto fp8_tag) {
    constexpr bool kFp8 = decltype(fp8_tag)::value;
    switch (g) {
      case 1: rms_norm_rope_kernel<T, 1, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      case 2: rms_norm_rope_kernel<T, 2, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      case 4: rms_norm_rope_kernel<T, 4, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      case 8: rms_norm_rope_kernel<T, 8, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      case 16: rms_norm_rope_kernel<T, 16, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      case 32: rms_norm_rope_kernel<T, 32, kFp8><<<blocks, kThreads, 0, stream>>>(a); break;
      default: TORCH_CHECK(false, "rms_norm_rope_cuda: unsupported head_dim ", head_dim);
    }
  };
  fp8 ? go(std::true_type{}) : go(std::false_type{});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool rms_norm_rope_cuda_supports(int64_t head_dim) {
  return head_dim % 8 == 0 && head_dim >= 8 && head_dim <= 256 && ((head_dim / 8) & (head_dim / 8 - 1)) == 0;
}

namespace {

void dispatch(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
              int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps, at::Tensor* out8,
              at::Tensor* out_scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  switch (x.scalar_type()) {
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(x, head_dim, w_text, w_image, text_len, cos, sin, eps, out8, out_scale);
      break;
    case at::kHalf:
      launch<__half, at::Half>(x, head_dim, w_text, w_image, text_len, cos, sin, eps, out8, out_scale);
      break;
    case at::kFloat:
      launch<float, float>(x, head_dim, w_text, w_image, text_len, cos, sin, eps, out8, out_scale);
      break;
    default:
      TORCH_CHECK(false, "rms_norm_rope_cuda: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace

void rms_norm_rope_cuda(at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
                        int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  if (x.numel() == 0) return;
  dispatch(x, head_dim, w_text, w_image, text_len, cos, sin, eps, nullptr, nullptr);
}

void rms_norm_rope_fp8_cuda(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text,
                            const at::Tensor& w_image, int64_t text_len, const at::Tensor& cos, const at::Tensor& sin,
                            double eps, at::Tensor& data, at::Tensor& scale) {
  if (x.numel() == 0) return;
  dispatch(x, head_dim, w_text, w_image, text_len, cos, sin, eps, &data, &scale);
}

}  // namespace fluxbatch::ops::detail
