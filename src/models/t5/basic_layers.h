// Leaf layers the encoders and the VAE need beyond src/nn (Linear, LayerNorm): Embedding, GroupNorm,
// Conv2d. Like nn::Linear they allocate their parameters uninitialised, directly in the target dtype
// and device (a randomly initialised fp32 T5-XXL would cost 19 GB before the checkpoint overwrites
// it). Each forward is the single ATen op the PyTorch module calls, so numerics match.
// Generic (not T5-specific): candidates for src/nn.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::models::layers {

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& ids);  // ids: [...] int64 -> [..., dim]
  at::Tensor weight;                          // [num_embeddings, dim]
};
TORCH_MODULE(Embedding);

class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t groups, int64_t channels, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, C, *] -> [B, C, *]
  int64_t groups() const { return groups_; }
  double eps() const { return eps_; }
  at::Tensor weight, bias;                  // [C]
 private:
  int64_t groups_;
  double eps_;
};
TORCH_MODULE(GroupNorm);

// transformers' NewGELUActivation op by op: 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))). Not
// at::gelu(x, "tanh"): same formula, different rounding in bf16.
at::Tensor gelu_new(const at::Tensor& x);

// Stride 1, zero padding, with bias (all the VAE decoder uses).
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t padding,
             const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, Cin, H, W] -> [B, Cout, H, W]
  int64_t padding() const { return padding_; }
  at::Tensor weight;                        // [Cout, Cin, k, k]
  at::Tensor bias;                          // [Cout]
 private:
  int64_t padding_;
};
TORCH_MODULE(Conv2d);

}  // namespace fluxbatch::models::layers
