#include "fluxbatch/nn/attention.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

namespace fluxbatch::nn {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, std::optional<double> scale, bool is_causal) {
  FLUXBATCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InputError,
                  "attention: q, k, v must be [B, S, H, D]");
  // SDPA wants [B, H, S, D]; the permutes are views, and SDPA's kernels accept the strides.
  const at::Tensor out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                          mask, /*dropout_p=*/0.0, is_causal, scale);
  return out.transpose(1, 2).flatten(2, 3).to(q.scalar_type());  // [B, Sq, H*D]
}

}  // namespace fluxbatch::nn
