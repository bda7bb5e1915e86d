// Test-only helpers for the T5 / CLIP / VAE tests: fixture paths, weights through nn::read_safetensors /
// nn::load_state with the models' ignore lists.
#pragma once
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

std::string config_json(const std::filesystem::path& folder);  // <folder>/config.json
nlohmann::json read_json(const std::filesystem::path& path);
nn::TensorMap read_tensors(const std::filesystem::path& path);
// The component's weights file(s) in a diffusers folder (single file or index-listed shards).
nn::TensorMap read_component_weights(const std::filesystem::path& folder);

std::set<std::string> parameter_names(const torch::nn::Module& module);
std::set<std::string> checkpoint_names(const nn::TensorMap& weights, const std::vector<std::string>& ignore_prefixes);

// nn::load_state with `dtype`, `device` and `ignore_prefixes` (ModelError on any name/shape mismatch).
void load_weights(torch::nn::Module& module, const nn::TensorMap& weights, at::ScalarType dtype,
                  const std::vector<std::string>& ignore_prefixes, c10::Device device = c10::Device(c10::kCPU));

// cuda:0, or FAIL when this machine has no CUDA device (the [cuda] tests are hidden: run on demand).
c10::Device cuda_device();

// max |a - b| in fp64, and max |b|.
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);
double max_abs(const at::Tensor& a);

}  // namespace fluxbatch::test::encoders
