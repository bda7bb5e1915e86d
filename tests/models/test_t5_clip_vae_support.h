// Test-only helpers for the T5 / CLIP / VAE tests: fixture paths, a small safetensors reader and a
// parameter loader. The reader and loader are stand-ins for nn::read_safetensors / nn::load_state
// until the loader branch is merged; they follow the same contract (names must match exactly).
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/models/vae/config.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace fluxbatch::test::encoders {

std::filesystem::path model_dir(const std::string& variant, const std::string& component);  // models/tiny-flux-<v>/<c>
std::filesystem::path golden_file(const std::string& variant, const std::string& name);      // tests/golden/<v>/<name>

nlohmann::json read_json(const std::filesystem::path& path);
nn::TensorMap read_tensors(const std::filesystem::path& path);
// The component's weights file(s) in a diffusers folder (single file or index-listed shards).
nn::TensorMap read_component_weights(const std::filesystem::path& folder);

std::set<std::string> parameter_names(const torch::nn::Module& module);
std::set<std::string> checkpoint_names(const nn::TensorMap& weights, const std::vector<std::string>& ignore_prefixes);

// Copies every parameter from `weights` (converted to the parameter's dtype); FAILs on a missing
// or mis-shaped key.
void load_weights(torch::nn::Module& module, const nn::TensorMap& weights);

// The few config.json fields the models use (stand-ins for the loader's from_json_file).
models::t5::T5Config read_t5_config(const std::filesystem::path& folder);
models::clip::ClipTextConfig read_clip_config(const std::filesystem::path& folder);
models::vae::VaeConfig read_vae_config(const std::filesystem::path& folder);

// max |a - b| in fp64, and max |b|.
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);
double max_abs(const at::Tensor& a);

}  // namespace fluxbatch::test::encoders
