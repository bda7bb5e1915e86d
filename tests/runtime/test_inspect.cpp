#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/inspect.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <nlohmann/json.hpp>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
using namespace fluxbatch::runtime;
namespace fs = std::filesystem;

namespace {
const fs::path kModels = FLUXBATCH_MODELS_DIR;

int64_t numel_of(const nn::TensorMap& m) {
  int64_t n = 0;
  for (const auto& [k, v] : m) n += v.numel();
  return n;
}
}  // namespace

TEST_CASE("inspect reports layout, variant and per-component sizes", "[model_files][inspect]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto doc = nlohmann::json::parse(inspect_model(dev.string(), true));
  CHECK(doc["layout"] == "diffusers");
  CHECK(doc["variant"] == "dev");
  const auto transformer = nn::read_safetensors({(dev / "transformer/diffusion_pytorch_model.safetensors").string()});
  const auto& t = doc["components"]["transformer"];
  CHECK(t["parameters"].get<int64_t>() == numel_of(transformer));
  CHECK(t["bytes"].get<int64_t>() == 2 * numel_of(transformer));
  CHECK(t["tensors"].get<size_t>() == transformer.size());
  CHECK(t["dtypes"]["BF16"].get<size_t>() == transformer.size());
  CHECK(t["quantization"] == "none");
  CHECK(t["dialect"] == "diffusers");
  CHECK(doc["components"].size() == 4);
  CHECK(doc["components"]["text_encoder_2"]["dialect"] == "transformers");

  // The BFL file holds the same parameters under other names.
  const auto single = nlohmann::json::parse(inspect_model(bfl.string(), true));
  CHECK(single["layout"] == "single-files");
  CHECK(single["components"]["transformer"]["parameters"] == t["parameters"]);
  CHECK(single["components"]["transformer"]["dialect"] == "bfl");
  CHECK(single["components"]["vae"]["parameters"] == doc["components"]["vae"]["parameters"]);

  const std::string text = inspect_model(dev.string(), false);
  CHECK_THAT(text, ContainsSubstring("layout:  diffusers"));
  CHECK_THAT(text, ContainsSubstring("variant: dev"));
  CHECK_THAT(text, ContainsSubstring("transformer:"));
  CHECK_THAT(text, ContainsSubstring("quantization: none"));
  CHECK_THAT(text, ContainsSubstring("(" + std::to_string(numel_of(transformer)) + ")"));
}

TEST_CASE("inspect names bnb-NF4 quantization and counts packed weights", "[model_files][inspect]") {
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  test::TempDir dir;
  // The tiny BFL transformer with img_in.weight replaced by bnb-NF4 packed data (Forge layout).
  auto weights = nn::read_safetensors({(bfl / "flux1-tiny-dev.safetensors").string()});
  const int64_t logical = weights.at("img_in.weight").numel();
  weights["img_in.weight"] = at::zeros({logical / 2, 1}, at::kByte);
  weights["img_in.weight.absmax"] = at::ones({logical / 64});
  weights["img_in.weight.quant_map"] = at::ones({16});
  const std::string state = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [32, 64]})";
  weights["img_in.weight.quant_state.bitsandbytes__nf4"] =
      at::from_blob(const_cast<char*>(state.data()), {static_cast<int64_t>(state.size())}, at::kByte).clone();
  nn::write_safetensors((dir / "flux1-tiny-dev-nf4.safetensors").string(), weights);
  for (const char* f : {"ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"}) {
    fs::create_symlink(bfl / f, dir / f);
  }
  const auto plain = nlohmann::json::parse(inspect_model(bfl.string(), true));
  const auto doc = nlohmann::json::parse(inspect_model(dir.path().string(), true));
  const auto& t = doc["components"]["transformer"];
  CHECK(t["quantization"] == "bnb-nf4");
  CHECK(t["parameters"] == plain["components"]["transformer"]["parameters"]);
  CHECK(t["dtypes"]["U8"].get<int>() == 2);
  CHECK(doc["components"]["vae"]["quantization"] == "none");
}
