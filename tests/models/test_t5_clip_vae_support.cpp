#include "test_t5_clip_vae_support.h"

#include "test_support.h"

#include <catch2/catch_test_macros.hpp>

#include <cstdlib>
#include <cstring>
#include <fstream>

namespace fluxbatch::test::encoders {
namespace {

std::filesystem::path root(const char* env, const char* fallback) {
  const char* value = std::getenv(env);
  return value && *value ? std::filesystem::path(value) : std::filesystem::path(fallback);
}

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "F32") return at::kFloat;
  if (name == "F16") return at::kHalf;
  if (name == "BF16") return at::kBFloat16;
  if (name == "F64") return at::kDouble;
  if (name == "I64") return at::kLong;
  if (name == "I32") return at::kInt;
  if (name == "U8") return at::kByte;
  if (name == "BOOL") return at::kBool;
  FAIL("unsupported safetensors dtype " + name);
  return at::kFloat;
}

}  // namespace

std::filesystem::path model_dir(const std::string& variant, const std::string& component) {
  return require_generated(root("FLUXBATCH_TEST_MODELS", FLUXBATCH_MODELS_DIR) / ("tiny-flux-" + variant) / component);
}

std::filesystem::path golden_file(const std::string& variant, const std::string& name) {
  return require_generated(root("FLUXBATCH_TEST_GOLDEN", FLUXBATCH_GOLDEN_DIR) / variant / name);
}

nlohmann::json read_json(const std::filesystem::path& path) { return nlohmann::json::parse(read_file(path)); }

nn::TensorMap read_tensors(const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  REQUIRE(bytes.size() >= 8);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);  // little-endian hosts only: fine for tests
  REQUIRE(8 + header_size <= bytes.size());
  const auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  const char* data = bytes.data() + 8 + header_size;
  nn::TensorMap tensors;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<size_t>>();
    const auto dtype = parse_dtype(info.at("dtype").get<std::string>());
    at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(dtype));
    REQUIRE(static_cast<size_t>(tensor.nbytes()) == offsets.at(1) - offsets.at(0));
    std::memcpy(tensor.data_ptr(), data + offsets.at(0), tensor.nbytes());
    tensors[name] = tensor;
  }
  return tensors;
}

nn::TensorMap read_component_weights(const std::filesystem::path& folder) {
  for (const char* name : {"model.safetensors", "diffusion_pytorch_model.safetensors"}) {
    if (std::filesystem::exists(folder / name)) return read_tensors(folder / name);
  }
  for (const char* name : {"model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"}) {
    if (!std::filesystem::exists(folder / name)) continue;
    std::set<std::string> shards;
    for (const auto& [key, shard] : read_json(folder / name).at("weight_map").items()) shards.insert(shard);
    nn::TensorMap all;
    for (const auto& shard : shards) all.merge(read_tensors(folder / shard));
    return all;
  }
  FAIL("no safetensors weights in " + folder.string());
  return {};
}

std::set<std::string> parameter_names(const torch::nn::Module& module) {
  std::set<std::string> names;
  for (const auto& item : module.named_parameters()) names.insert(item.key());
  for (const auto& item : module.named_buffers()) names.insert(item.key());
  return names;
}

std::set<std::string> checkpoint_names(const nn::TensorMap& weights, const std::vector<std::string>& ignore_prefixes) {
  std::set<std::string> names;
  for (const auto& [name, tensor] : weights) {
    bool ignored = false;
    for (const auto& prefix : ignore_prefixes) ignored = ignored || name.rfind(prefix, 0) == 0;
    if (!ignored) names.insert(name);
  }
  return names;
}

void load_weights(torch::nn::Module& module, const nn::TensorMap& weights) {
  at::NoGradGuard no_grad;
  for (auto& item : module.named_parameters()) {
    auto it = weights.find(item.key());
    if (it == weights.end()) FAIL("checkpoint lacks " + item.key());
    at::Tensor& param = item.value();
    if (!param.sizes().equals(it->second.sizes())) FAIL("shape mismatch for " + item.key());
    param.copy_(it->second.to(param.scalar_type()));
  }
}

models::t5::T5Config read_t5_config(const std::filesystem::path& folder) {
  const auto j = read_json(folder / "config.json");
  models::t5::T5Config c;
  c.vocab_size = j.at("vocab_size");
  c.d_model = j.at("d_model");
  c.d_kv = j.at("d_kv");
  c.d_ff = j.at("d_ff");
  c.num_layers = j.at("num_layers");
  c.num_heads = j.at("num_heads");
  c.relative_attention_num_buckets = j.at("relative_attention_num_buckets");
  c.relative_attention_max_distance = j.at("relative_attention_max_distance");
  c.layer_norm_epsilon = j.at("layer_norm_epsilon");
  const std::string proj = j.at("feed_forward_proj");
  c.is_gated_act = proj.rfind("gated-", 0) == 0;
  // T5Config derives the activation from feed_forward_proj and ignores a stored dense_act_fn.
  c.dense_act_fn = proj == "gated-gelu" ? "gelu_new" : proj.substr(proj.rfind('-') + 1);
  return c;
}

models::clip::ClipTextConfig read_clip_config(const std::filesystem::path& folder) {
  const auto j = read_json(folder / "config.json");
  models::clip::ClipTextConfig c;
  c.vocab_size = j.at("vocab_size");
  c.hidden_size = j.at("hidden_size");
  c.intermediate_size = j.at("intermediate_size");
  c.num_hidden_layers = j.at("num_hidden_layers");
  c.num_attention_heads = j.at("num_attention_heads");
  c.max_position_embeddings = j.at("max_position_embeddings");
  c.layer_norm_eps = j.at("layer_norm_eps");
  c.hidden_act = j.at("hidden_act");
  c.eos_token_id = j.at("eos_token_id");
  return c;
}

models::vae::VaeConfig read_vae_config(const std::filesystem::path& folder) {
  const auto j = read_json(folder / "config.json");
  models::vae::VaeConfig c;
  c.latent_channels = j.at("latent_channels");
  c.out_channels = j.at("out_channels");
  c.block_out_channels = j.at("block_out_channels").get<std::vector<int64_t>>();
  c.layers_per_block = j.at("layers_per_block");
  c.norm_num_groups = j.at("norm_num_groups");
  c.mid_block_add_attention = j.value("mid_block_add_attention", true);
  c.scaling_factor = j.at("scaling_factor");
  c.shift_factor = j.at("shift_factor");
  return c;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

double max_abs(const at::Tensor& a) { return a.to(at::kDouble).abs().max().item<double>(); }

}  // namespace fluxbatch::test::encoders
