#include "fluxbatch/ops/fp8_attention.h"

#include "fluxbatch/core/error.h"
#include "fp8_reference.h"
#include "fused_checks.h"
#include "fused_kernels.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>

namespace fluxbatch::ops {
namespace {

// The reference (fp8_attention.h) in fp32: q, k, v as their e4m3 values, the scales applied as cuDNN applies
// its descales (to the scores, and to the weighted sum).
Fp8Heads reference(const Fp8Heads& q, const Fp8Heads& k, const Fp8Heads& v, int64_t head_dim) {
  const int64_t images = q.data.size(0), heads = q.data.size(2) / head_dim;
  auto split = [&](const at::Tensor& t) {  // [B, S, H * D] -> [B, H, S, D] fp32
    return t.to(at::kFloat).unflatten(-1, {heads, head_dim}).transpose(1, 2);
  };
  auto per_image = [](const at::Tensor& s) { return s.view({-1, 1, 1, 1}); };
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  at::Tensor scores = at::matmul(split(q.data), split(k.data).transpose(-1, -2));  // [B, H, Sq, Skv]
  scores = scores * per_image(q.scale * k.scale) * softmax_scale;
  at::Tensor p = (scores - scores.amax(-1, true)).exp_();
  scores = at::Tensor();
  const at::Tensor sums = p.sum(-1, true);  // from the unrounded probabilities
  const at::Tensor p8 = detail::fp8_round(p, at::full({}, kFp8AttentionProbScale, p.options())).to(at::kFloat);
  p = at::Tensor();
  at::Tensor out = at::matmul(p8, split(v.data)) * per_image(v.scale / kFp8AttentionProbScale) / sums;
  out = out.transpose(1, 2).flatten(2);  // [B, Sq, H * D]
  const at::Tensor out_scale = v.scale * kFp8AttentionOutMargin;
  const at::Tensor inverse = at::ones_like(out_scale) / out_scale;
  return {detail::fp8_round(out, inverse.view({-1, 1, 1})), out_scale};
}

void check(const Fp8Heads& t, const char* name, const Fp8Heads& q, int64_t head_dim) {
  detail::check_fp8_heads("fp8_attention", name, t);
  FLUXBATCH_CHECK(t.data.size(0) == q.data.size(0) && t.data.size(2) == q.data.size(2) &&
                      t.data.device() == q.data.device(),
                  std::invalid_argument,
                  std::string("fp8_attention: ") + name + " must have q's images and width, on q's device");
  FLUXBATCH_CHECK(head_dim > 0 && t.data.size(2) % head_dim == 0, std::invalid_argument,
                  "fp8_attention: the last dimension must be whole heads");
}

}  // namespace

Fp8Heads fp8_attention(const Fp8Heads& q, const Fp8Heads& k, const Fp8Heads& v, int64_t head_dim) {
  check(q, "q", q, head_dim);
  check(k, "k", q, head_dim);
  check(v, "v", q, head_dim);
  FLUXBATCH_CHECK(k.data.size(1) == v.data.size(1), std::invalid_argument,
                  "fp8_attention: k and v must have the same tokens");
#ifdef FLUXBATCH_WITH_CUDNN_FRONTEND
  if (q.data.is_cuda()) {
    FLUXBATCH_CHECK(fp8_attention_supported(q.data.device()), std::invalid_argument,
                    "fp8_attention: " + q.data.device().str() + " cannot run cuDNN's fp8 attention");
    const int64_t images = q.data.size(0);
    Fp8Heads out{at::empty(q.data.sizes(), q.data.options()), at::empty({images}, q.scale.options())};
    at::Tensor params = at::empty({images, detail::kFp8AttentionScalars, detail::kFp8AttentionSlot}, q.scale.options());
    detail::fp8_attention_scalars_cuda(q.scale.contiguous(), k.scale.contiguous(), v.scale.contiguous(), params,
                                       out.scale);
    detail::fp8_attention_cudnn(q.data, k.data, v.data, head_dim, params, out.data);
    return out;
  }
#endif
  return reference(q, k, v, head_dim);
}

bool fp8_attention_supported(const c10::Device& device) {
#ifdef FLUXBATCH_WITH_CUDNN_FRONTEND
  return device.is_cuda() && detail::fp8_attention_cudnn_available(device.index() < 0 ? 0 : device.index());
#else
  (void)device;
  return false;
#endif
}

}  // namespace fluxbatch::ops
