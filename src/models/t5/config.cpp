#include "fluxbatch/models/t5/config.h"

#include "../config_fields.h"

namespace fluxbatch::models::t5 {

void T5Config::validate(const std::string& origin) const {
  using detail::require_positive;
  require_positive(origin, "vocab_size", vocab_size);
  require_positive(origin, "d_model", d_model);
  require_positive(origin, "d_kv", d_kv);
  require_positive(origin, "d_ff", d_ff);
  require_positive(origin, "num_layers", num_layers);
  require_positive(origin, "num_heads", num_heads);
  require_positive(origin, "relative_attention_num_buckets", relative_attention_num_buckets);
  require_positive(origin, "relative_attention_max_distance", relative_attention_max_distance);
  if (!(layer_norm_epsilon > 0)) throw ModelError(origin + ": \"layer_norm_epsilon\" must be positive");
  if (dense_act_fn != "gelu_new" && dense_act_fn != "gelu_pytorch_tanh" && dense_act_fn != "relu" &&
      dense_act_fn != "gelu") {
    throw ModelError(origin + ": activation \"" + dense_act_fn +
                     "\" is not supported (expected gelu_new, gelu_pytorch_tanh, gelu or relu)");
  }
}

T5Config T5Config::from_json_file(const std::string& path) {
  const nlohmann::json root = detail::read_config_json(path);
  const detail::ConfigFields f(root, path);
  T5Config c;
  f.get("vocab_size", &c.vocab_size);
  f.get("d_model", &c.d_model);
  f.get("d_kv", &c.d_kv);
  f.get("d_ff", &c.d_ff);
  f.get("num_layers", &c.num_layers);
  f.get("num_heads", &c.num_heads);
  f.get("relative_attention_num_buckets", &c.relative_attention_num_buckets);
  f.get("relative_attention_max_distance", &c.relative_attention_max_distance);
  f.get("layer_norm_epsilon", &c.layer_norm_epsilon);
  // transformers derives the activation from feed_forward_proj and ignores a saved dense_act_fn.
  std::string proj;
  f.get("feed_forward_proj", &proj);
  if (!proj.empty()) {
    const size_t dash = proj.find('-');
    const bool gated = dash != std::string::npos && proj.compare(0, dash, "gated") == 0;
    if ((dash != std::string::npos && !gated) || (gated && proj.find('-', dash + 1) != std::string::npos)) {
      f.fail("feed_forward_proj", "must be \"gated-<act>\" or \"<act>\"");
    }
    c.is_gated_act = gated;
    c.dense_act_fn = gated ? proj.substr(dash + 1) : proj;
    if (proj == "gated-gelu") c.dense_act_fn = "gelu_new";
  }
  c.validate(path);
  return c;
}

}  // namespace fluxbatch::models::t5
