#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/model_io/inspect.h"
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

TEST_CASE("inspect tells dense, nf4, nf4 double-quant and fp8 storage apart", "[model_files][inspect]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const auto dense = summarize_model(dev.string());
  const auto& t = dense.components[0];
  REQUIRE(t.name == "transformer");
  CHECK(t.format == "dense");
  CHECK(t.dense_dtype == "bf16");
  CHECK(t.quantized_bytes == 0);
  // Every 2-D weight of the transformer is a Linear; T5's Linears are all but the embeddings and wo.
  const auto transformer = nn::read_safetensors({(dev / "transformer/diffusion_pytorch_model.safetensors").string()});
  int64_t linear = 0;
  for (const auto& [k, v] : transformer) linear += v.dim() == 2 ? v.numel() : 0;
  CHECK(t.nf4_candidate_parameters == linear);
  const auto t5 = nn::read_safetensors({(dev / "text_encoder_2/model.safetensors").string()});
  int64_t t5_linear = 0;
  for (const auto& [k, v] : t5) {
    const bool embedding = k.find("shared") != std::string::npos || k.find("embed_tokens") != std::string::npos ||
                           k.find("relative_attention_bias") != std::string::npos;
    const bool wo = k.find(".wo.") != std::string::npos;
    t5_linear += v.dim() == 2 && !embedding && !wo ? v.numel() : 0;
  }
  CHECK(t5_linear > 0);
  CHECK(dense.components[2].nf4_candidate_parameters == t5_linear);
  CHECK(dense.components[1].nf4_candidate_parameters == 0);  // CLIP stays dense
  CHECK(dense.components[3].nf4_candidate_parameters == 0);  // VAE too
  CHECK(loaded_bytes(t, 2, false) == t.parameters * 2);
  CHECK(loaded_bytes(t, 2, true) == (t.parameters - linear) * 2 + nf4_bytes(linear));
  CHECK(nf4_bytes(128) == 64 + 2 * 4);

  for (const char* name : {"tiny-flux-dev-nf4", "tiny-flux-dev-nf4-dq"}) {
    const auto m = summarize_model(test::require_generated(kModels / name).string());
    const auto& q = m.components[0];
    INFO(name);
    CHECK(q.format == (std::string(name).find("-dq") != std::string::npos ? "nf4-dq" : "nf4"));
    CHECK(q.dense_dtype == "bf16");
    CHECK(q.quantized_bytes > 0);
    CHECK(q.quantized_bytes < q.bytes);
    CHECK(q.nf4_candidate_parameters == 0);
    CHECK(loaded_bytes(q, 4, true) == static_cast<int64_t>(q.bytes));
  }

  // A BFL transformer with one weight in float8 (e4m3fn), like the fp8 checkpoints people download.
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  test::TempDir dir;
  auto weights = nn::read_safetensors({(bfl / "flux1-tiny-dev.safetensors").string()});
  weights["img_in.weight"] = weights.at("img_in.weight").to(at::kFloat8_e4m3fn);
  const int64_t fp8_numel = weights.at("img_in.weight").numel();
  nn::write_safetensors((dir / "flux1-tiny-dev-fp8.safetensors").string(), weights);
  for (const char* f : {"ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"}) fs::create_symlink(bfl / f, dir / f);
  const auto fp8 = summarize_model(dir.path().string());
  CHECK(fp8.components[0].format == "fp8-e4m3");
  CHECK(fp8.components[0].quantized_bytes == static_cast<uint64_t>(fp8_numel));
  CHECK(fp8.components[0].nf4_candidate_parameters == 0);
  CHECK_THAT(inspect_model(dir.path().string(), false), ContainsSubstring("quantization: fp8-e4m3 ("));
}
