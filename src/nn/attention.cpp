#include "fluxbatch/nn/attention.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"

#include <ATen/ATen.h>

#include <mutex>
#include <set>
#include <string>
#include <tuple>

namespace fluxbatch::nn {
namespace {

// at::_fused_sdp_choice's answer (sdp::SDPBackend).
const char* backend_name(int64_t backend) {
  switch (backend) {
    case 0: return "math (unfused)";
    case 1: return "FlashAttention";
    case 2: return "memory-efficient";
    case 3: return "cuDNN fused";
    default: return "other";
  }
}

// Says once per device, dtype, shape and layout which SDPA kernel PyTorch picks for it: the backend decides a
// large share of a step's time, and it differs between cards and versions.
void log_backend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask,
                 std::optional<double> scale, bool is_causal) {
  static std::mutex mutex;
  static std::set<std::tuple<std::string, int, std::vector<int64_t>, std::vector<int64_t>>> seen;
  // Strides too: a backend may take one layout and not another (q / k / v read as column slices of a wider
  // product, as the fp8 single blocks do).
  auto key = std::make_tuple(q.device().str(), static_cast<int>(q.scalar_type()), q.sizes().vec(), q.strides().vec());
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (!seen.insert(std::move(key)).second) return;
  }
  const int64_t backend = at::_fused_sdp_choice(q, k, v, mask, 0.0, is_causal, scale);
  log::info(std::string("attention: ") + backend_name(backend) + " SDPA for " + c10::toString(q.scalar_type()) +
            " [B, H, S, D] = " + c10::str(q.sizes()) + " (strides " + c10::str(q.strides()) + ") on " +
            q.device().str());
}

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, std::optional<double> scale, bool is_causal) {
  FLUXBATCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InputError,
                  "attention: q, k, v must be [B, S, H, D]");
  // SDPA wants [B, H, S, D]; the permutes are views of the [B, S, H, D] projections, which the fused
  // kernels (cuDNN, flash) read in place and answer in the same layout, so the flatten below is a view too.
  const at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
  if (q.is_cuda()) log_backend(qt, kt, vt, mask, scale, is_causal);
  const at::Tensor out = at::scaled_dot_product_attention(qt, kt, vt, mask, /*dropout_p=*/0.0, is_causal, scale);
  return out.transpose(1, 2).flatten(2, 3).to(q.scalar_type());  // [B, Sq, H*D]
}

}  // namespace fluxbatch::nn
