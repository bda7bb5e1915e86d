#include "fluxbatch/models/clip/config.h"

#include "../config_fields.h"

namespace fluxbatch::models::clip {

void ClipTextConfig::validate(const std::string& origin) const {
  using detail::require_positive;
  require_positive(origin, "vocab_size", vocab_size);
  require_positive(origin, "hidden_size", hidden_size);
  require_positive(origin, "intermediate_size", intermediate_size);
  require_positive(origin, "num_hidden_layers", num_hidden_layers);
  require_positive(origin, "num_attention_heads", num_attention_heads);
  require_positive(origin, "max_position_embeddings", max_position_embeddings);
  if (hidden_size % num_attention_heads != 0) {
    throw ModelError(origin + ": \"hidden_size\" " + std::to_string(hidden_size) +
                     " is not divisible by \"num_attention_heads\" " + std::to_string(num_attention_heads));
  }
  if (!(layer_norm_eps > 0)) throw ModelError(origin + ": \"layer_norm_eps\" must be positive");
  if (hidden_act != "quick_gelu" && hidden_act != "gelu") {
    throw ModelError(origin + ": \"hidden_act\" \"" + hidden_act + "\" is not supported (expected quick_gelu or gelu)");
  }
}

ClipTextConfig ClipTextConfig::from_json_file(const std::string& path) {
  const nlohmann::json file = detail::read_config_json(path);
  // A full CLIPConfig nests the text half under "text_config".
  const bool nested = file.contains("text_config") && file["text_config"].is_object();
  const nlohmann::json& root = nested ? file["text_config"] : file;
  const detail::ConfigFields f(root, nested ? path + " text_config" : path);
  ClipTextConfig c;
  f.get("vocab_size", &c.vocab_size);
  f.get("hidden_size", &c.hidden_size);
  f.get("intermediate_size", &c.intermediate_size);
  f.get("num_hidden_layers", &c.num_hidden_layers);
  f.get("num_attention_heads", &c.num_attention_heads);
  f.get("max_position_embeddings", &c.max_position_embeddings);
  f.get("layer_norm_eps", &c.layer_norm_eps);
  f.get("hidden_act", &c.hidden_act);
  if (f.has("eos_token_id") && root["eos_token_id"].is_array()) {
    // transformers allows a list; the first id is the one pooling looks for.
    if (root["eos_token_id"].empty() || !root["eos_token_id"][0].is_number_integer()) {
      f.fail("eos_token_id", "must be an integer or a list of integers");
    }
    c.eos_token_id = root["eos_token_id"][0].get<int64_t>();
  } else {
    f.get("eos_token_id", &c.eos_token_id);
  }
  c.validate(path);
  return c;
}

}  // namespace fluxbatch::models::clip
