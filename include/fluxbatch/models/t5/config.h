// T5 encoder hyper-parameters; defaults are google/t5-v1_1-xxl as shipped with FLUX.1.
#pragma once
#include <cstdint>
#include <string>

namespace fluxbatch::models::t5 {

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 4096;
  int64_t d_kv = 64;
  int64_t d_ff = 10240;
  int64_t num_layers = 24;
  int64_t num_heads = 64;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  std::string dense_act_fn = "gelu_new";  // gated-gelu feed-forward
  bool is_gated_act = true;

  void validate(const std::string& origin) const;
  static T5Config from_json_file(const std::string& path);  // transformers config.json
};

}  // namespace fluxbatch::models::t5
