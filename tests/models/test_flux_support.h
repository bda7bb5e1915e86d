// Test-only stand-in until FluxConfig::from_json_file (loader helper) lands in main: reads the
// config.json fields the transformer needs.
#pragma once
#include "fluxbatch/models/flux/config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fluxbatch::test::flux {

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
