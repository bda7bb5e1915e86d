// Normalisations over the last dimension, built on the ATen ops torch.nn uses (at::layer_norm,
// at::rms_norm) so results match PyTorch bit for bit on the same device and dtype.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::nn {

// torch.nn.LayerNorm(dim, elementwise_affine=False): x: [..., C] -> [..., C]
at::Tensor layer_norm(const at::Tensor& x, double eps);

// torch.nn.RMSNorm(dim, eps, elementwise_affine): parameter "weight" [dim] when affine.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, bool elementwise_affine = true,
              const at::TensorOptions& options = at::TensorOptions());
  // x: [..., dim] -> [..., dim]
  at::Tensor forward(const at::Tensor& x) const;

  double eps() const { return eps_; }

  at::Tensor weight;  // [dim], undefined without affine

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

// torch.nn.LayerNorm(dim, eps, elementwise_affine, bias): "weight" and "bias" [dim] when affine.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, bool elementwise_affine = true, bool bias = true,
                const at::TensorOptions& options = at::TensorOptions());
  // x: [..., dim] -> [..., dim]
  at::Tensor forward(const at::Tensor& x) const;

  at::Tensor weight;  // [dim] or undefined
  at::Tensor bias;    // [dim] or undefined

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(LayerNorm);

}  // namespace fluxbatch::nn
