// Building blocks of the T5 encoder stack, named after transformers' modeling_t5.py classes so the
// registered names reproduce its state-dict keys.
#pragma once
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/nn/block_hook.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/norms.h"
#include "models/t5/basic_layers.h"

#include <torch/nn/modules/container/modulelist.h>

#include <vector>

namespace fluxbatch::models::t5 {

// RMS norm, no mean, no bias. The variance is taken in fp32 and the normalised activations are
// cast back to the weight's dtype when that is fp16/bf16 (T5LayerNorm).
class T5LayerNormImpl : public torch::nn::Module {
 public:
  T5LayerNormImpl(int64_t hidden_size, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, D] -> [B, L, D]
  at::Tensor weight;                        // [D]
 private:
  double eps_;
};
TORCH_MODULE(T5LayerNorm);

class T5AttentionImpl : public torch::nn::Module {
 public:
  T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  // Bidirectional relative position bias: [1, H, q_len, k_len] in the bias table's dtype.
  at::Tensor compute_bias(int64_t q_len, int64_t k_len);
  // x: [B, L, D], position_bias: [1, H, L, L] -> [B, L, D]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& position_bias);
  bool has_relative_attention_bias() const { return !relative_attention_bias_.is_empty(); }

 private:
  T5Config config_;
  nn::Linear q_{nullptr}, k_{nullptr}, v_{nullptr}, o_{nullptr};
  layers::Embedding relative_attention_bias_{nullptr};
};
TORCH_MODULE(T5Attention);

class T5LayerSelfAttentionImpl : public torch::nn::Module {
 public:
  T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  // x: [B, L, D], position_bias: [1, H, L, L] -> [B, L, D] (residual added)
  at::Tensor forward(const at::Tensor& x, const at::Tensor& position_bias);
  T5Attention attention{nullptr};  // "SelfAttention"

 private:
  T5LayerNorm layer_norm_{nullptr};
};
TORCH_MODULE(T5LayerSelfAttention);

// wo(act(wi_0(x)) * wi_1(x)) when gated, else wo(act(wi(x))). The input of `wo` is cast to its
// weight dtype, which differs from the activations only when `wo` is kept in fp32.
class T5DenseActDenseImpl : public torch::nn::Module {
 public:
  T5DenseActDenseImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, D] -> [B, L, D] (dtype of wo)
  nn::Linear wo{nullptr};

 private:
  std::string act_;
  nn::Linear wi_{nullptr}, wi_0_{nullptr}, wi_1_{nullptr};
};
TORCH_MODULE(T5DenseActDense);

class T5LayerFFImpl : public torch::nn::Module {
 public:
  T5LayerFFImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, D] -> [B, L, D] (residual added)
  T5DenseActDense dense{nullptr};           // "DenseReluDense"

 private:
  T5LayerNorm layer_norm_{nullptr};
};
TORCH_MODULE(T5LayerFF);

class T5BlockImpl : public torch::nn::Module {
 public:
  T5BlockImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options);
  // x: [B, L, D], position_bias: [1, H, L, L] -> [B, L, D]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& position_bias);
  T5LayerSelfAttention self_attention{nullptr};  // "layer.0"
  T5LayerFF ff{nullptr};                         // "layer.1"
};
TORCH_MODULE(T5Block);

class T5StackImpl : public torch::nn::Module {
 public:
  T5StackImpl(const T5Config& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& embeds);  // embeds: [B, L, D] -> [B, L, D]
  std::vector<T5Block> blocks;                   // "block.N"
  nn::BlockHook hook;                            // T5EncoderModelImpl::set_block_hook

 private:
  T5LayerNorm final_layer_norm_{nullptr};
};

// gelu_new / gelu_pytorch_tanh / relu / gelu as transformers' ACT2FN evaluates them.
at::Tensor t5_activation(const std::string& name, const at::Tensor& x);

}  // namespace fluxbatch::models::t5
