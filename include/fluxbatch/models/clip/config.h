// CLIP text encoder hyper-parameters; defaults are openai/clip-vit-large-patch14 (FLUX text_encoder).
#pragma once
#include <cstdint>
#include <string>

namespace fluxbatch::models::clip {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";
  int64_t eos_token_id = 2;  // legacy value in the FLUX config; pooling uses the first 49407 anyway

  void validate(const std::string& origin) const;
  static ClipTextConfig from_json_file(const std::string& path);  // transformers config.json
};

}  // namespace fluxbatch::models::clip
