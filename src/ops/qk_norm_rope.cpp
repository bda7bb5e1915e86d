#include "fluxbatch/ops/qk_norm_rope.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fluxbatch/ops/rope.h"
#include "fp8_reference.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>

namespace fluxbatch::ops {
namespace {

// The reference: at::rms_norm per stream (each rounded to x's dtype), then RoPE in fp32, rounded again.
void reference(at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
               int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  const at::Tensor heads = x.unflatten(-1, {-1, head_dim});  // [B, S, H, D], a view of x
  const int64_t tokens = x.size(1);
  at::Tensor normed;
  if (text_len == 0) {
    normed = at::rms_norm(heads, {head_dim}, w_image, eps);
  } else if (text_len == tokens) {
    normed = at::rms_norm(heads, {head_dim}, w_text, eps);
  } else {
    normed = at::cat({at::rms_norm(heads.narrow(1, 0, text_len), {head_dim}, w_text, eps),
                      at::rms_norm(heads.narrow(1, text_len, tokens - text_len), {head_dim}, w_image, eps)},
                     1);
  }
  heads.copy_(apply_rope(normed, cos, sin));
}

void check_arguments(const char* op, const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text,
                     const at::Tensor& w_image, int64_t text_len, const at::Tensor& cos, const at::Tensor& sin) {
  detail::check_rows(op, "x", x);
  FLUXBATCH_CHECK(head_dim > 0 && head_dim % 2 == 0 && x.size(2) % head_dim == 0, std::invalid_argument,
                  std::string(op) + ": the last dimension must be whole heads of an even head_dim");
  FLUXBATCH_CHECK(text_len >= 0 && text_len <= x.size(1), std::invalid_argument,
                  std::string(op) + ": text_len outside the sequence");
  for (const at::Tensor* w : {&w_text, &w_image}) {
    FLUXBATCH_CHECK(!w->defined() || (w->dim() == 1 && w->size(0) == head_dim && w->is_contiguous()),
                    std::invalid_argument, std::string(op) + ": norm weights must be [head_dim]");
    if (w->defined()) detail::check_like(op, "a norm weight", *w, x);
  }
  FLUXBATCH_CHECK(cos.dim() == 2 && cos.size(0) == x.size(1) && cos.size(1) == head_dim && cos.sizes() == sin.sizes() &&
                      cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                      cos.device() == x.device() && sin.device() == x.device(),
                  std::invalid_argument, std::string(op) + ": cos and sin must be fp32 [S, head_dim] on x's device");
}

bool fused_supported(const at::Tensor& x, int64_t head_dim) {
#ifdef FLUXBATCH_WITH_CUDA
  return x.is_cuda() && kernel_mode() == KernelMode::kFused && detail::rms_norm_rope_cuda_supports(head_dim) &&
         x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0;
#else
  (void)x;
  (void)head_dim;
  return false;
#endif
}

}  // namespace

void rms_norm_rope_(at::Tensor& x, int64_t head_dim, const at::Tensor& w_text, const at::Tensor& w_image,
                    int64_t text_len, const at::Tensor& cos, const at::Tensor& sin, double eps) {
  check_arguments("rms_norm_rope_", x, head_dim, w_text, w_image, text_len, cos, sin);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused_supported(x, head_dim)) {
    detail::rms_norm_rope_cuda(x, head_dim, w_text, w_image, text_len, cos.contiguous(), sin.contiguous(), eps);
    return;
  }
#endif
  reference(x, head_dim, w_text, w_image, text_len, cos, sin, eps);
}

Fp8Heads rms_norm_rope_fp8(const at::Tensor& x, int64_t head_dim, const at::Tensor& w_text,
                           const at::Tensor& w_image, int64_t text_len, const at::Tensor& cos, const at::Tensor& sin,
                           double eps) {
  check_arguments("rms_norm_rope_fp8", x, head_dim, w_text, w_image, text_len, cos, sin);
  const int64_t images = x.size(0);
#ifdef FLUXBATCH_WITH_CUDA
  if (fused_supported(x, head_dim)) {
    Fp8Heads out{at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn)),
                 at::empty({images}, x.options().dtype(at::kFloat))};
    detail::rms_norm_rope_fp8_cuda(x, head_dim, w_text, w_image, text_len, cos.contiguous(), sin.contiguous(), eps,
                                   out.data, out.scale);
    return out;
  }
#endif
  // The reference in fp32, rounded once to e4m3 with the bound's scale.
  auto wide = [](const at::Tensor& w) { return w.defined() ? w.to(at::kFloat) : w; };
  at::Tensor normed = x.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);  // x itself stays as it is
  reference(normed, head_dim, wide(w_text), wide(w_image), text_len, cos, sin, eps);
  at::Tensor wmax = at::ones({}, x.options().dtype(at::kFloat));
  if (w_text.defined() || w_image.defined()) {
    wmax = at::zeros({}, x.options().dtype(at::kFloat));
    for (const at::Tensor* w : {&w_text, &w_image}) {
      if (w->defined()) wmax = at::maximum(wmax, w->to(at::kFloat).abs().max());
    }
  }
  const at::Tensor bound = (wmax * at::full({}, std::sqrt(static_cast<float>(head_dim)), wmax.options())).expand({images});
  auto [scale, inverse] = detail::fp8_scale_and_inverse(bound.contiguous());
  return {detail::fp8_round(normed, inverse.view({-1, 1, 1})), scale};
}

}  // namespace fluxbatch::ops
