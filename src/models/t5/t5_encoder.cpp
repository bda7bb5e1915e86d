#include "fluxbatch/models/t5/t5_encoder.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/nf4_state.h"
#include "models/t5/t5_layers.h"

namespace fluxbatch::models::t5 {

std::vector<std::string> t5_ignored_prefixes() { return {"decoder.", "lm_head."}; }

void canonicalize_t5_checkpoint(nn::TensorMap& weights) {
  const std::string tied = "encoder.embed_tokens.weight";
  auto it = weights.find(tied);
  if (it == weights.end()) return;
  if (weights.count("shared.weight") == 0) weights["shared.weight"] = it->second;
  weights.erase(tied);
}

T5EncoderModelImpl::T5EncoderModelImpl(const T5Config& config, const at::TensorOptions& options) : config_(config) {
  FLUXBATCH_CHECK(config.num_layers > 0 && config.num_heads > 0 && config.d_kv > 0, ModelError,
                  "T5: num_layers, num_heads and d_kv must be positive");
  shared_ = register_module("shared", layers::Embedding(config.vocab_size, config.d_model, options));
  encoder_ = register_module("encoder", std::make_shared<T5StackImpl>(config, options));
}

at::Tensor T5EncoderModelImpl::forward(const at::Tensor& input_ids) {
  FLUXBATCH_CHECK(input_ids.dim() == 2, InputError,
                  "T5: input_ids must be [batch, length], got " + std::to_string(input_ids.dim()) + " dims");
  return encoder_->forward(shared_->forward(input_ids));  // [B, L] -> [B, L, d_model]
}

void T5EncoderModelImpl::set_block_hook(nn::BlockHook hook) { encoder_->hook = std::move(hook); }

std::vector<torch::nn::Module*> T5EncoderModelImpl::blocks() {
  std::vector<torch::nn::Module*> out;
  for (const T5Block& b : encoder_->blocks) out.push_back(b.ptr().get());
  return out;
}

void T5EncoderModelImpl::keep_wo_in_float32() {
  for (auto& block : encoder_->blocks) {
    at::Tensor& weight = block->ff->dense->wo->weight;
    weight.set_data(weight.to(at::kFloat));
  }
}

bool t5_linear_is_quantized(const std::string& name) {
  const std::string wo = ".wo";
  return !(name == "wo" || (name.size() > wo.size() && name.compare(name.size() - wo.size(), wo.size(), wo) == 0));
}

std::shared_ptr<at::Tensor> load_t5_quantizing_nf4(T5EncoderModelImpl& t5, const nn::TensorMap& weights,
                                                   const nn::LoadOptions& options) {
  return nn::load_state_quantizing_nf4(t5, weights, options, t5_linear_is_quantized);
}

}  // namespace fluxbatch::models::t5
