// Test-only stand-ins until the loader branch (nn::read_safetensors, nn::load_state,
// FluxConfig::from_json_file) lands in main: a small safetensors reader, a strict name-by-name
// state loader, and a reader for the few config.json fields the transformer needs.
#pragma once
#include "fluxbatch/models/flux/config.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace fluxbatch::test::flux {

inline std::map<std::string, at::Tensor> read_safetensors(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::map<std::string, at::ScalarType> dtypes = {
      {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf}, {"F64", at::kDouble}, {"I64", at::kLong}};
  std::map<std::string, at::Tensor> out;
  const nlohmann::json index = nlohmann::json::parse(header);
  for (const auto& [name, info] : index.items()) {
    if (name == "__metadata__") continue;
    const auto dtype = dtypes.at(info.at("dtype").get<std::string>());
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<size_t>>();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    if (offsets[1] - offsets[0] != t.nbytes()) throw std::runtime_error("bad span for " + name);
    std::memcpy(t.data_ptr(), data.data() + offsets[0], t.nbytes());
    out.emplace(name, t);
  }
  return out;
}

// Copies every parameter by name (converting to the parameter's dtype); throws on any missing,
// unexpected or mis-shaped key.
inline void load_state(torch::nn::Module& module, const std::map<std::string, at::Tensor>& weights) {
  at::NoGradGuard no_grad;
  auto params = module.named_parameters();
  if (params.size() != weights.size()) {
    throw std::runtime_error("parameter count " + std::to_string(params.size()) + " != checkpoint " +
                             std::to_string(weights.size()));
  }
  for (auto& item : params) {
    const auto it = weights.find(item.key());
    if (it == weights.end()) throw std::runtime_error("missing in checkpoint: " + item.key());
    if (!it->second.sizes().equals(item.value().sizes())) throw std::runtime_error("shape mismatch: " + item.key());
    item.value().copy_(it->second);
  }
}

inline models::flux::FluxConfig read_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  models::flux::FluxConfig c;
  c.patch_size = j.at("patch_size");
  c.in_channels = j.at("in_channels");
  c.out_channels = j.at("out_channels").is_null() ? c.in_channels : j.at("out_channels").get<int64_t>();
  c.num_layers = j.at("num_layers");
  c.num_single_layers = j.at("num_single_layers");
  c.attention_head_dim = j.at("attention_head_dim");
  c.num_attention_heads = j.at("num_attention_heads");
  c.joint_attention_dim = j.at("joint_attention_dim");
  c.pooled_projection_dim = j.at("pooled_projection_dim");
  c.guidance_embeds = j.at("guidance_embeds");
  c.axes_dims_rope = j.at("axes_dims_rope").get<std::vector<int64_t>>();
  return c;
}

}  // namespace fluxbatch::test::flux
