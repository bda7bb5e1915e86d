#include "fluxbatch/models/clip/clip_text_model.h"

#include "fluxbatch/core/error.h"
#include "models/clip/clip_layers.h"

namespace fluxbatch::models::clip {

std::vector<std::string> clip_ignored_prefixes() {
  return {"text_model.embeddings.position_ids", "text_projection.", "logit_scale", "vision_model.",
          "visual_projection."};
}

void canonicalize_clip_checkpoint(nn::TensorMap& weights) {
  static const char* const kUnprefixed[] = {"embeddings.", "encoder.", "final_layer_norm."};
  nn::TensorMap renamed;
  for (auto it = weights.begin(); it != weights.end();) {
    bool moved = false;
    for (const char* prefix : kUnprefixed) {
      if (it->first.rfind(prefix, 0) == 0) {
        renamed["text_model." + it->first] = it->second;
        it = weights.erase(it);
        moved = true;
        break;
      }
    }
    if (!moved) ++it;
  }
  for (auto& [name, tensor] : renamed) {
    FLUXBATCH_CHECK(weights.count(name) == 0, ModelError,
                    "CLIP checkpoint holds both '" + name + "' and its unprefixed form");
    weights[name] = tensor;
  }
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config, const at::TensorOptions& options)
    : config_(config) {
  FLUXBATCH_CHECK(config.num_attention_heads > 0 && config.hidden_size % config.num_attention_heads == 0, ModelError,
                  "CLIP: hidden_size " + std::to_string(config.hidden_size) + " is not divisible by " +
                      std::to_string(config.num_attention_heads) + " heads");
  text_model_ = register_module("text_model", std::make_shared<ClipTextTransformerImpl>(config, options));
}

ClipTextOutput ClipTextModelImpl::forward(const at::Tensor& input_ids) {
  FLUXBATCH_CHECK(input_ids.dim() == 2, InputError,
                  "CLIP: input_ids must be [batch, length], got " + std::to_string(input_ids.dim()) + " dims");
  ClipTextOutput out;
  out.last_hidden_state = text_model_->forward(input_ids);  // [B, L, H]
  at::Tensor ids = input_ids.to(out.last_hidden_state.device(), at::kInt);
  // transformers keeps the pre-#24773 rule for configs that still say eos_token_id 2.
  at::Tensor eos = config_.eos_token_id == 2 ? ids.argmax(-1) : (ids == config_.eos_token_id).to(at::kInt).argmax(-1);
  at::Tensor rows = at::arange(ids.size(0), ids.options().dtype(at::kLong));
  out.pooler_output = out.last_hidden_state.index({rows, eos});  // [B, H]
  return out;
}

}  // namespace fluxbatch::models::clip
