#include "test_t5_clip_vae_support.h"

#include "fluxbatch/runtime/device.h"
#include "test_support.h"

#include <catch2/catch_test_macros.hpp>

#include <cstdlib>

namespace fluxbatch::test::encoders {
namespace {

std::filesystem::path root(const char* env, const char* fallback) {
  const char* value = std::getenv(env);
  return value && *value ? std::filesystem::path(value) : std::filesystem::path(fallback);
}

}  // namespace

std::filesystem::path model_dir(const std::string& variant, const std::string& component) {
  return require_generated(root("FLUXBATCH_TEST_MODELS", FLUXBATCH_MODELS_DIR) / ("tiny-flux-" + variant) / component);
}

std::filesystem::path golden_file(const std::string& variant, const std::string& name) {
  return require_generated(root("FLUXBATCH_TEST_GOLDEN", FLUXBATCH_GOLDEN_DIR) / variant / name);
}

std::string config_json(const std::filesystem::path& folder) {
  return require_generated(folder / "config.json").string();
}

nlohmann::json read_json(const std::filesystem::path& path) { return nlohmann::json::parse(read_file(path)); }

nn::TensorMap read_tensors(const std::filesystem::path& path) { return nn::read_safetensors({path.string()}); }

nn::TensorMap read_component_weights(const std::filesystem::path& folder) {
  for (const char* name : {"model.safetensors", "diffusion_pytorch_model.safetensors", "model.safetensors.index.json",
                           "diffusion_pytorch_model.safetensors.index.json"}) {
    if (std::filesystem::exists(folder / name)) return read_tensors(folder / name);
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

void load_weights(torch::nn::Module& module, const nn::TensorMap& weights, at::ScalarType dtype,
                  const std::vector<std::string>& ignore_prefixes, c10::Device device) {
  nn::LoadOptions options;
  options.dtype = dtype;
  options.device = device;
  options.ignore_prefixes = ignore_prefixes;
  options.what = "test model";
  nn::load_state(module, weights, options);
}

c10::Device cuda_device() {
  if (!runtime::cuda_available()) FAIL("this [cuda] test needs a CUDA device");
  return c10::Device(c10::kCUDA, 0);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

double max_abs(const at::Tensor& a) { return a.to(at::kCPU, at::kDouble).abs().max().item<double>(); }

}  // namespace fluxbatch::test::encoders
