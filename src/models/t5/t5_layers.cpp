#include "models/t5/t5_layers.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/activations.h"
#include "fluxbatch/nn/attention.h"

#include <cmath>

namespace fluxbatch::models::t5 {
namespace {

// transformers clamps fp16 activations after every sub-layer so an overflow to inf does not
// poison the next layers; the bound drops by 1000 once an inf has appeared.
at::Tensor clamp_fp16(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf) return x;
  const double max = 65504.0;  // torch.finfo(torch.float16).max
  auto scalar = [&](double v) { return at::scalar_tensor(v, x.options().dtype(at::kFloat)); };
  at::Tensor bound = at::where(at::isinf(x).any(), scalar(max - 1000.0), scalar(max));
  return at::clamp(x, -bound, bound);
}

// Bucketing of relative positions (memory - query) as T5Attention._relative_position_bucket with
// bidirectional=True; the float ops are the same ATen ops so bucket boundaries agree bit for bit.
at::Tensor relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets, int64_t max_distance) {
  num_buckets /= 2;
  at::Tensor buckets = (relative_position > 0).to(at::kLong) * num_buckets;
  at::Tensor distance = at::abs(relative_position);
  const int64_t max_exact = num_buckets / 2;
  at::Tensor is_small = distance < max_exact;
  at::Tensor if_large = (at::log(distance.to(at::kFloat) / max_exact) /
                         std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                         (num_buckets - max_exact))
                            .to(at::kLong) +
                        max_exact;
  if_large = at::min(if_large, at::full_like(if_large, num_buckets - 1));
  return buckets + at::where(is_small, distance, if_large);
}

}  // namespace

at::Tensor t5_activation(const std::string& name, const at::Tensor& x) {
  if (name == "gelu_new") return layers::gelu_new(x);
  if (name == "gelu_pytorch_tanh") return nn::gelu_tanh(x);
  if (name == "gelu") return nn::gelu(x);
  if (name == "relu") return at::relu(x);
  throw ModelError("T5: unsupported dense_act_fn '" + name + "' (expected gelu_new, gelu_pytorch_tanh, gelu or relu)");
}

T5LayerNormImpl::T5LayerNormImpl(int64_t hidden_size, double eps, const at::TensorOptions& options) : eps_(eps) {
  weight = register_parameter("weight", at::empty({hidden_size}, options), false);
}

at::Tensor T5LayerNormImpl::forward(const at::Tensor& x) {
  at::Tensor variance = x.to(at::kFloat).pow(2).mean({-1}, /*keepdim=*/true);
  at::Tensor h = x * at::rsqrt(variance + eps_);
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) h = h.to(weight.scalar_type());
  return weight * h;
}

T5AttentionImpl::T5AttentionImpl(const T5Config& config, bool has_relative_attention_bias,
                                 const at::TensorOptions& options)
    : config_(config) {
  const int64_t inner = config.num_heads * config.d_kv;
  q_ = register_module("q", nn::Linear(config.d_model, inner, false, options));
  k_ = register_module("k", nn::Linear(config.d_model, inner, false, options));
  v_ = register_module("v", nn::Linear(config.d_model, inner, false, options));
  o_ = register_module("o", nn::Linear(inner, config.d_model, false, options));
  if (has_relative_attention_bias) {
    relative_attention_bias_ = register_module(
        "relative_attention_bias",
        layers::Embedding(config.relative_attention_num_buckets, config.num_heads, options));
  }
}

at::Tensor T5AttentionImpl::compute_bias(int64_t q_len, int64_t k_len) {
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(relative_attention_bias_->weight.device());
  at::Tensor context = at::arange(q_len, long_options).unsqueeze(1);
  at::Tensor memory = at::arange(k_len, long_options).unsqueeze(0);
  at::Tensor bucket = relative_position_bucket(memory - context, config_.relative_attention_num_buckets,
                                               config_.relative_attention_max_distance);
  return relative_attention_bias_->forward(bucket).permute({2, 0, 1}).unsqueeze(0);  // [1, H, q, k]
}

at::Tensor T5AttentionImpl::forward(const at::Tensor& x, const at::Tensor& position_bias) {
  const int64_t batch = x.size(0), length = x.size(1);
  auto heads = [&](const at::Tensor& t) { return t.view({batch, length, -1, config_.d_kv}); };
  at::Tensor q = heads(q_->forward(x));  // [B, L, H, d_kv]
  at::Tensor k = heads(k_->forward(x));
  at::Tensor v = heads(v_->forward(x));
  // T5 folds the bias into the scores (transformers passes it to SDPA as a contiguous additive
  // mask) and does not scale q.k.
  at::Tensor out = nn::attention(q, k, v, position_bias.contiguous(), /*scale=*/1.0);  // [B, L, H*d_kv]
  return o_->forward(out);
}

T5LayerSelfAttentionImpl::T5LayerSelfAttentionImpl(const T5Config& config, bool has_relative_attention_bias,
                                                   const at::TensorOptions& options) {
  attention = register_module("SelfAttention", T5Attention(config, has_relative_attention_bias, options));
  layer_norm_ = register_module("layer_norm", T5LayerNorm(config.d_model, config.layer_norm_epsilon, options));
}

at::Tensor T5LayerSelfAttentionImpl::forward(const at::Tensor& x, const at::Tensor& position_bias) {
  return x + attention->forward(layer_norm_->forward(x), position_bias);
}

T5DenseActDenseImpl::T5DenseActDenseImpl(const T5Config& config, const at::TensorOptions& options)
    : act_(config.dense_act_fn) {
  if (config.is_gated_act) {
    wi_0_ = register_module("wi_0", nn::Linear(config.d_model, config.d_ff, false, options));
    wi_1_ = register_module("wi_1", nn::Linear(config.d_model, config.d_ff, false, options));
  } else {
    wi_ = register_module("wi", nn::Linear(config.d_model, config.d_ff, false, options));
  }
  wo = register_module("wo", nn::Linear(config.d_ff, config.d_model, false, options));
}

at::Tensor T5DenseActDenseImpl::forward(const at::Tensor& x) {
  at::Tensor h = wi_0_ ? t5_activation(act_, wi_0_->forward(x)) * wi_1_->forward(x)  // [B, L, d_ff]
                       : t5_activation(act_, wi_->forward(x));
  if (h.scalar_type() != wo->weight.scalar_type()) h = h.to(wo->weight.scalar_type());
  return wo->forward(h);
}

T5LayerFFImpl::T5LayerFFImpl(const T5Config& config, const at::TensorOptions& options) {
  dense = register_module("DenseReluDense", T5DenseActDense(config, options));
  layer_norm_ = register_module("layer_norm", T5LayerNorm(config.d_model, config.layer_norm_epsilon, options));
}

at::Tensor T5LayerFFImpl::forward(const at::Tensor& x) { return x + dense->forward(layer_norm_->forward(x)); }

T5BlockImpl::T5BlockImpl(const T5Config& config, bool has_relative_attention_bias, const at::TensorOptions& options) {
  auto layer = register_module("layer", torch::nn::ModuleList());
  self_attention = T5LayerSelfAttention(config, has_relative_attention_bias, options);
  ff = T5LayerFF(config, options);
  layer->push_back(self_attention);
  layer->push_back(ff);
}

at::Tensor T5BlockImpl::forward(const at::Tensor& x, const at::Tensor& position_bias) {
  at::Tensor h = clamp_fp16(self_attention->forward(x, position_bias));
  return clamp_fp16(ff->forward(h));
}

T5StackImpl::T5StackImpl(const T5Config& config, const at::TensorOptions& options) {
  auto block = register_module("block", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) {
    blocks.push_back(T5Block(config, /*has_relative_attention_bias=*/i == 0, options));
    block->push_back(blocks.back());
  }
  final_layer_norm_ =
      register_module("final_layer_norm", T5LayerNorm(config.d_model, config.layer_norm_epsilon, options));
}

at::Tensor T5StackImpl::forward(const at::Tensor& embeds) {
  const int64_t length = embeds.size(1);
  // Computed once by block 0 and shared by every layer (so block 0's hook comes first).
  if (hook.before) hook.before(0);
  at::Tensor position_bias = blocks.front()->self_attention->attention->compute_bias(length, length);
  at::Tensor h = embeds;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i > 0 && hook.before) hook.before(static_cast<int64_t>(i));
    h = blocks[i]->forward(h, position_bias);
    if (hook.after) hook.after(static_cast<int64_t>(i));
  }
  return final_layer_norm_->forward(h);
}

}  // namespace fluxbatch::models::t5
