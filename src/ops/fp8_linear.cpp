#include "fluxbatch/ops/fp8_linear.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fp8_reference.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

#include <cstdint>
#ifdef FLUXBATCH_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include <string>
#include <vector>

namespace fluxbatch::ops {
namespace {

bool fused(const at::Tensor& t) { return t.is_cuda() && kernel_mode() == KernelMode::kFused; }

// The reference quantization (fp8_reference.h) over each row.
Fp8Rows quantize_reference(const at::Tensor& x) {
  const at::Tensor wide = x.to(at::kFloat);
  auto [scale, inverse] = detail::fp8_scale_and_inverse(wide.abs().amax(-1));  // [...]
  return {detail::fp8_round(wide, inverse.unsqueeze(-1)), scale};
}

// x: [..., K] as the 2-D rows [R, K] the kernels read: a view when the last dim is contiguous and the rows lie
// at one stride (a column slice of a wider product, e.g. the single blocks' q / k / v / MLP columns), a
// contiguous copy otherwise.
at::Tensor as_rows(const at::Tensor& x) {
  const int64_t k = x.size(-1);
  bool one_stride = x.stride(-1) == 1;
  for (int64_t d = 0; one_stride && d + 2 < x.dim(); ++d) one_stride = x.stride(d) == x.size(d + 1) * x.stride(d + 1);
  if (!one_stride) return x.contiguous().view({-1, k});
  const int64_t rows = x.numel() / k;
  return x.as_strided({rows, k}, {x.dim() >= 2 ? x.stride(-2) : k, 1});
}

}  // namespace

namespace detail {

std::pair<at::Tensor, at::Tensor> fp8_scale_and_inverse(const at::Tensor& absmax) {
  at::Tensor scale = absmax / at::full_like(absmax, quant::kFp8E4m3Max);
  at::Tensor inverse = at::full_like(absmax, quant::kFp8E4m3Max) / absmax;
  const at::Tensor degenerate = inverse.isinf();
  scale.masked_fill_(degenerate, 1.0);
  inverse.masked_fill_(degenerate, 1.0);
  return {scale, inverse};
}

at::Tensor fp8_round(const at::Tensor& wide, const at::Tensor& inverse) {
  return (wide * inverse).clamp_(-quant::kFp8E4m3Max, quant::kFp8E4m3Max).to(at::kFloat8_e4m3fn).contiguous();
}

}  // namespace detail

Fp8Rows quantize_fp8_rows(const at::Tensor& x) { return quantize_fp8_rows_joined(at::Tensor(), x, false); }

Fp8Rows quantize_fp8_rows_joined(const at::Tensor& a, const at::Tensor& b, bool gelu_b) {
  auto usable = [](const at::Tensor& t) {
    return t.dim() >= 1 && t.size(-1) > 0 &&
           (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf || t.scalar_type() == at::kFloat);
  };
  FLUXBATCH_CHECK(usable(b) && (!a.defined() || usable(a)), std::invalid_argument,
                  "quantize_fp8_rows: inputs must be bf16, fp16 or fp32 [..., K]");
  FLUXBATCH_CHECK(!a.defined() || (a.scalar_type() == b.scalar_type() && a.device() == b.device() &&
                                   a.sizes().slice(0, a.dim() - 1) == b.sizes().slice(0, b.dim() - 1)),
                  std::invalid_argument, "quantize_fp8_rows_joined: a and b must share dtype, device and rows");
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(b)) {
    const int64_t ka = a.defined() ? a.size(-1) : 0, kb = b.size(-1);
    std::vector<int64_t> shape = b.sizes().vec();
    shape.back() = ka + kb;
    Fp8Rows out{at::empty(shape, b.options().dtype(at::kFloat8_e4m3fn)),
                at::empty(b.sizes().slice(0, b.dim() - 1), b.options().dtype(at::kFloat))};
    at::Tensor data = out.data.view({-1, ka + kb});
    at::Tensor scale = out.scale.view({-1});
    detail::quantize_fp8_rows_cuda(a.defined() ? as_rows(a) : a, as_rows(b), gelu_b, data, scale);
    return out;
  }
#endif
  const at::Tensor second = gelu_b ? at::gelu(b, "tanh") : b;
  return quantize_reference(a.defined() ? at::cat({a, second}, -1) : second);
}

Fp8Rows quantize_fp8_rows_joined(const Fp8Heads& a, const at::Tensor& b, bool gelu_b) {
  detail::check_fp8_heads("quantize_fp8_rows_joined", "a", a);
  FLUXBATCH_CHECK(b.defined() && b.dim() == 3 && a.data.sizes().slice(0, 2) == b.sizes().slice(0, 2) &&
                      a.data.device() == b.device(),
                  std::invalid_argument, "quantize_fp8_rows_joined: b must be [B, S, Kb] like a, on its device");
#ifdef FLUXBATCH_WITH_CUDA
  if (fused(b)) {
    const int64_t ka = a.data.size(2), kb = b.size(2);
    Fp8Rows out{at::empty({b.size(0), b.size(1), ka + kb}, b.options().dtype(at::kFloat8_e4m3fn)),
                at::empty({b.size(0), b.size(1)}, b.options().dtype(at::kFloat))};
    at::Tensor data = out.data.view({-1, ka + kb});
    at::Tensor scale = out.scale.view({-1});
    const at::Tensor a_rows = as_rows(a.data), b_rows = as_rows(b);
    // Rows of one image lie at one stride only within the image: as_rows copies otherwise, and the per-image
    // scale then indexes the copy's rows the same way.
    if (detail::quantize_fp8_rows_fp8a_cuda(a_rows, a.scale.contiguous(), b.size(1), b_rows, gelu_b, data, scale)) {
      return out;
    }
  }
#endif
  return quantize_fp8_rows_joined(dequantize_fp8_heads(a, b.scalar_type()), b, gelu_b);
}

at::Tensor dequantize_fp8_rows(const Fp8Rows& rows, at::ScalarType dtype) {
  return (rows.data.to(at::kFloat) * rows.scale.unsqueeze(-1)).to(dtype);
}

bool fp8_gemm_supported(const c10::Device& device) {
#ifdef FLUXBATCH_WITH_CUDA
  if (!device.is_cuda()) return false;
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
  return p->major * 10 + p->minor >= 89;
#else
  (void)device;
  return false;
#endif
}

void fp8_linear_out(at::Tensor& out, const Fp8Rows& x, const quant::Fp8Tensor& w, const at::Tensor& bias,
                    bool gelu_tanh) {
  w.validate("fp8_linear");
  const int64_t k = w.cols(), n = w.rows();
  FLUXBATCH_CHECK(x.data.dim() >= 2 && x.data.size(-1) == k && x.data.scalar_type() == at::kFloat8_e4m3fn &&
                      x.scale.sizes() == x.data.sizes().slice(0, x.data.dim() - 1),
                  std::invalid_argument,
                  "fp8_linear: x must be e4m3 rows [B, ..., " + std::to_string(k) + "] with one scale per row");
  FLUXBATCH_CHECK(out.dim() == x.data.dim() && out.size(0) == x.data.size(0) && out.size(-1) == n, std::invalid_argument,
                  "fp8_linear: out must be [B, ..., " + std::to_string(n) + "]");
  FLUXBATCH_CHECK(x.data.device() == w.device() && out.device() == w.device(), std::invalid_argument,
                  "fp8_linear: x, w and out must be on one device");
  const at::Tensor b = bias.defined() ? bias.to(out.scalar_type()) : bias;
  for (int64_t i = 0; i < x.data.size(0); ++i) {
    const at::Tensor rows = x.data.narrow(0, i, 1).contiguous().view({-1, k});  // [M, K]
    at::Tensor scales = x.scale.narrow(0, i, 1).contiguous().view({-1, 1});  // [M, 1]
    at::Tensor target = out.narrow(0, i, 1).view({-1, n});                       // [M, N]
#ifdef FLUXBATCH_WITH_CUDA
    if (fused(rows) && out.scalar_type() == at::kBFloat16) {
      // Row-wise scaled fp8 GEMM: scale_a [M, 1] per token, scale_b [1, N] per channel; the weight goes in
      // as the column-major [K, N] (w.t() of the row-major [N, K]) the kernel wants. A target with a row
      // gap (a column slice) gets the product through a contiguous buffer.
      at::Tensor product = target.is_contiguous() ? target : at::empty(target.sizes(), target.options());
      // cuBLASLt wants the row-wise scale vectors 16-byte aligned: image i's slice of the scales starts
      // 4 * M * i bytes in, so an image with few rows (the modulation's one) gets an aligned copy.
      if (reinterpret_cast<uintptr_t>(scales.data_ptr()) % 16 != 0) scales = scales.clone();
      at::_scaled_mm_out(product, rows, w.data.t(), scales, w.scale.view({1, -1}),
                         b.defined() ? std::optional<at::Tensor>(b) : std::nullopt, std::nullopt, at::kBFloat16,
                         /*use_fast_accum=*/true);
      // GELU on the contiguous product: a vectorized pass, where the strided column slice is not.
      if (gelu_tanh) at::gelu_(product, "tanh");
      if (!product.is_same(target)) target.copy_(product);
      continue;
    }
#endif
    // The reference: both operands dequantized to fp32, an fp32 GEMM, one rounding to the output type.
    const at::Tensor a = rows.to(at::kFloat) * scales;
    const at::Tensor wd = w.data.to(at::kFloat) * w.scale.unsqueeze(1);
    target.copy_(at::linear(a, wd, b.defined() ? b.to(at::kFloat) : b));
    if (gelu_tanh) at::gelu_(target, "tanh");  // on the rounded output, as the CUDA path
  }
}

at::Tensor fp8_linear(const Fp8Rows& x, const quant::Fp8Tensor& w, const at::Tensor& bias, at::ScalarType out_dtype) {
  std::vector<int64_t> shape = x.data.sizes().vec();
  FLUXBATCH_CHECK(!shape.empty(), std::invalid_argument, "fp8_linear: x must be [B, ..., K]");
  shape.back() = w.rows();
  at::Tensor out = at::empty(shape, x.data.options().dtype(out_dtype));
  fp8_linear_out(out, x, w, bias);
  return out;
}

}  // namespace fluxbatch::ops
