// A Linear layer whose parameters are created uninitialised with the caller's dtype and device, so a
// 12B-parameter model is allocated once, where it will run, and then filled by nn::load_state.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::nn {

class LinearImpl : public torch::nn::Module {
 public:
  // Registers "weight" [out, in] and, when `bias`, "bias" [out] (torch.nn.Linear's names).
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true,
             const at::TensorOptions& options = at::TensorOptions());

  // x: [..., in] -> [..., out]
  at::Tensor forward(const at::Tensor& x) const;

  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }

  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out], undefined without bias
};
TORCH_MODULE(Linear);

}  // namespace fluxbatch::nn
