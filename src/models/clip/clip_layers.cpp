#include "models/clip/clip_layers.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/activations.h"
#include "fluxbatch/nn/attention.h"

#include <torch/nn/modules/container/modulelist.h>

#include <cmath>

namespace fluxbatch::models::clip {

at::Tensor clip_activation(const std::string& name, const at::Tensor& x) {
  if (name == "quick_gelu") return nn::quick_gelu(x);
  if (name == "gelu") return nn::gelu(x);
  if (name == "gelu_new") return layers::gelu_new(x);
  throw ModelError("CLIP: unsupported hidden_act '" + name + "' (expected quick_gelu, gelu or gelu_new)");
}

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& config, const at::TensorOptions& options)
    : heads_(config.num_attention_heads), head_dim_(config.hidden_size / config.num_attention_heads) {
  const int64_t dim = config.hidden_size;
  k_proj_ = register_module("k_proj", nn::Linear(dim, dim, true, options));
  v_proj_ = register_module("v_proj", nn::Linear(dim, dim, true, options));
  q_proj_ = register_module("q_proj", nn::Linear(dim, dim, true, options));
  out_proj_ = register_module("out_proj", nn::Linear(dim, dim, true, options));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto heads = [&](const at::Tensor& t) { return t.view({batch, length, -1, head_dim_}); };
  at::Tensor q = heads(q_proj_->forward(x));  // [B, L, heads, head_dim]
  at::Tensor k = heads(k_proj_->forward(x));
  at::Tensor v = heads(v_proj_->forward(x));
  // transformers' SDPA path: no mask tensor, is_causal, scale head_dim ** -0.5.
  const double scale = std::pow(static_cast<double>(head_dim_), -0.5);
  at::Tensor out = nn::attention(q, k, v, std::nullopt, scale, /*is_causal=*/true);  // [B, L, H]
  return out_proj_->forward(out);
}

ClipMlpImpl::ClipMlpImpl(const ClipTextConfig& config, const at::TensorOptions& options) : act_(config.hidden_act) {
  fc1_ = register_module("fc1", nn::Linear(config.hidden_size, config.intermediate_size, true, options));
  fc2_ = register_module("fc2", nn::Linear(config.intermediate_size, config.hidden_size, true, options));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  return fc2_->forward(clip_activation(act_, fc1_->forward(x)));  // [B, L, I] inside
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& config, const at::TensorOptions& options) {
  self_attn_ = register_module("self_attn", ClipAttention(config, options));
  layer_norm1_ = register_module("layer_norm1", nn::LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
  mlp_ = register_module("mlp", ClipMlp(config, options));
  layer_norm2_ = register_module("layer_norm2", nn::LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& x) {
  at::Tensor h = x + self_attn_->forward(layer_norm1_->forward(x));
  return h + mlp_->forward(layer_norm2_->forward(h));
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& config, const at::TensorOptions& options) {
  embeddings_ = register_module("embeddings", std::make_shared<torch::nn::Module>());
  token_embedding_ = embeddings_->register_module(
      "token_embedding", layers::Embedding(config.vocab_size, config.hidden_size, options));
  position_embedding_ = embeddings_->register_module(
      "position_embedding", layers::Embedding(config.max_position_embeddings, config.hidden_size, options));
  encoder_ = register_module("encoder", std::make_shared<torch::nn::Module>());
  auto list = encoder_->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    layers_.push_back(ClipEncoderLayer(config, options));
    list->push_back(layers_.back());
  }
  final_layer_norm_ =
      register_module("final_layer_norm", nn::LayerNorm(config.hidden_size, config.layer_norm_eps, true, true, options));
}

at::Tensor ClipTextTransformerImpl::forward(const at::Tensor& input_ids) {
  const int64_t length = input_ids.size(-1);
  FLUXBATCH_CHECK(length <= position_embedding_->weight.size(0), InputError,
                  "CLIP: sequence length " + std::to_string(length) + " exceeds max_position_embeddings " +
                      std::to_string(position_embedding_->weight.size(0)));
  at::Tensor positions = at::arange(length, input_ids.options().dtype(at::kLong)).unsqueeze(0);  // [1, L]
  at::Tensor h = token_embedding_->forward(input_ids) + position_embedding_->forward(positions);  // [B, L, H]
  for (auto& layer : layers_) h = layer->forward(h);
  return final_layer_norm_->forward(h);
}

}  // namespace fluxbatch::models::clip
