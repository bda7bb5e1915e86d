// CLIPTextModel (transformers 5.24 semantics, SDPA attention path) for FLUX's text_encoder.
// Registered names are the classic checkpoint keys: text_model.embeddings.{token,position}_embedding.weight,
// text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}.{weight,bias},
// text_model.final_layer_norm.{weight,bias}.
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

namespace fluxbatch::models::clip {

class ClipTextTransformerImpl;

// Checkpoint keys a CLIP text file may hold that the text model does not use (the position_ids
// buffer of older transformers, projection heads and the vision tower of full CLIP files).
std::vector<std::string> clip_ignored_prefixes();

// transformers >= 5 saves CLIPTextModel without the `text_model.` prefix; this puts it back so
// both dialects load into the same module.
void canonicalize_clip_checkpoint(nn::TensorMap& weights);

struct ClipTextOutput {
  at::Tensor last_hidden_state;  // [B, L, H], after final_layer_norm
  at::Tensor pooler_output;      // [B, H], last_hidden_state at each row's EOS position
};

class ClipTextModelImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); load them afterwards.
  explicit ClipTextModelImpl(const ClipTextConfig& config, const at::TensorOptions& options = at::kFloat);

  // input_ids: [B, L] int64, L <= max_position_embeddings. Causal mask only (no padding mask), as
  // FluxPipeline calls it. Pooling: with the legacy eos_token_id 2 (FLUX's config) the position of
  // the row's largest id (argmax: the first 49407), else the first position of eos_token_id.
  ClipTextOutput forward(const at::Tensor& input_ids);

  const ClipTextConfig& config() const { return config_; }

 private:
  ClipTextConfig config_;
  std::shared_ptr<ClipTextTransformerImpl> text_model_;
};
TORCH_MODULE(ClipTextModel);

}  // namespace fluxbatch::models::clip
