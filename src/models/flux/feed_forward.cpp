#include "fluxbatch/models/flux/feed_forward.h"

#include "fluxbatch/ops/fp8_linear.h"

#include <ATen/ATen.h>

namespace fluxbatch::models::flux {

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t dim_out, int64_t hidden, const at::TensorOptions& options)
    : proj_in(nn::Linear(dim, hidden, true, options)), proj_out(nn::Linear(hidden, dim_out, true, options)) {
  // Only the names matter here: "net" holds "0" (the GELU wrapper owning "proj") and "2".
  auto net = register_module("net", std::make_shared<torch::nn::Module>());
  auto gelu = net->register_module("0", std::make_shared<torch::nn::Module>());
  gelu->register_module("proj", proj_in);
  net->register_module("2", proj_out);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) const {
  if (proj_in->takes_fp8() && proj_out->takes_fp8() && proj_out->loras().empty()) {
    return second(proj_in->forward(x), x.scalar_type());  // the fp8 GEMM's product, before GELU
  }
  // The GELU rides in the first GEMM (on CUDA its epilogue; else in place): the hidden states
  // [B, S, 4 * dim] are the block's largest tensor.
  return proj_out->forward(proj_in->forward_gelu_tanh(x));
}

bool FeedForwardImpl::takes_fp8_rows() const { return proj_in->takes_fp8() && proj_in->loras().empty(); }

at::Tensor FeedForwardImpl::forward(const ops::Fp8Rows& x, at::ScalarType dtype) const {
  return second(proj_in->forward(x, dtype), dtype);
}

at::Tensor FeedForwardImpl::second(at::Tensor hidden, at::ScalarType dtype) const {
  if (proj_out->takes_fp8() && proj_out->loras().empty()) {
    // fp8 compute: the GELU rides in the quantization of the second GEMM's input rows (one kernel reads
    // the first product once), the same values as a GELU pass and the quantization. Not with LoRAs on the
    // second layer: their side paths read its dense input.
    return proj_out->forward(ops::quantize_fp8_rows_joined(at::Tensor(), hidden, /*gelu_b=*/true), dtype);
  }
  // GELU on the rounded product, as forward_gelu_tanh does after an fp8 GEMM.
  return proj_out->forward(at::gelu_(hidden, "tanh"));
}

}  // namespace fluxbatch::models::flux
