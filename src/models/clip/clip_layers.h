// Blocks of the CLIP text transformer, named after transformers' modeling_clip.py so registered
// names reproduce its checkpoint keys.
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/norms.h"
#include "models/t5/basic_layers.h"

#include <vector>

namespace fluxbatch::models::clip {

class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, H] -> [B, L, H], causal

 private:
  int64_t heads_, head_dim_;
  nn::Linear q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, out_proj_{nullptr};
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, H] -> [B, L, H]

 private:
  std::string act_;
  nn::Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  ClipEncoderLayerImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, L, H] -> [B, L, H]

 private:
  ClipAttention self_attn_{nullptr};
  nn::LayerNorm layer_norm1_{nullptr}, layer_norm2_{nullptr};
  ClipMlp mlp_{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

// "text_model": embeddings, encoder.layers, final_layer_norm.
class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  ClipTextTransformerImpl(const ClipTextConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input_ids);  // [B, L] int64 -> [B, L, H] (final-normed)

 private:
  std::shared_ptr<torch::nn::Module> embeddings_, encoder_;
  layers::Embedding token_embedding_{nullptr}, position_embedding_{nullptr};
  std::vector<ClipEncoderLayer> layers_;
  nn::LayerNorm final_layer_norm_{nullptr};
};

// quick_gelu / gelu / gelu_new as transformers' ACT2FN evaluates them.
at::Tensor clip_activation(const std::string& name, const at::Tensor& x);

}  // namespace fluxbatch::models::clip
