// Forge's all-in-one flux1-dev-bnb-nf4 files (v1: double quantized, v2: float32 absmax), as
// scripts/make_forge_nf4.py builds them from the tiny NF4 folders: BFL NF4 transformer with fused
// qkv / linear1, LDM VAE, CLIP fp16, T5 fp8 e4m3fn. Each must render what its reference diffusers folder
// (same weights, split and rounded the way the script documents) renders, bit for bit.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/nf4_format.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "test_support.h"
#include "tiny_render.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

struct ForgeCase {
  const char* folder;
  const char* file;
};

const ForgeCase kV1{"tiny-flux-dev-forge-nf4-v1", "flux1-dev-bnb-nf4.safetensors"};
const ForgeCase kV2{"tiny-flux-dev-forge-nf4-v2", "flux1-dev-bnb-nf4-v2.safetensors"};

fs::path forge_file(const ForgeCase& c) { return test::require_generated(kModels / c.folder / c.file); }
fs::path reference_dir(const ForgeCase& c) { return test::require_generated(kModels / c.folder / "reference"); }

// scripts/make_nf4_models.py CASE, rendered in fp32 on the CPU.
at::Tensor render(const std::string& model) {
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  return test::render_tiny(model, options);
}

// Linears of a renamed (diffusers-named) transformer map that are NF4.
std::vector<std::string> nf4_linears(const nn::TensorMap& weights) {
  std::vector<std::string> out;
  const std::string& suffix = nn::bnb_nf4_state_suffix();
  for (const auto& [name, t] : weights) {
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      out.push_back(name.substr(0, name.size() - suffix.size()));
    }
  }
  return out;
}

}  // namespace

TEST_CASE("a Forge NF4 file is located as an all-in-one bnb-nf4 model with fp8 T5 and fp16 CLIP", "[forge]") {
  const ForgeCase c = GENERATE(kV1, kV2);
  INFO(c.folder);
  const auto model = runtime::locate_model(forge_file(c).string());
  CHECK(model.layout == runtime::ModelLayout::kAllInOne);
  CHECK(model.variant == runtime::FluxVariant::kDev);
  CHECK(model.transformer.prefix == "model.diffusion_model.");
  CHECK(model.transformer.dialect == models::KeyDialect::kBfl);
  CHECK(model.transformer.quantization == "bnb-nf4");
  CHECK(model.vae.dialect == models::KeyDialect::kLdm);
  CHECK(model.text_encoder.quantization.empty());
  CHECK(model.text_encoder_2.quantization.empty());
  CHECK_FALSE(runtime::component_shapes(model.transformer).empty());
  // Shapes only (packed weights): the detected configuration is the reference folder's.
  const auto ref = runtime::locate_model((reference_dir(c) / "diffusers").string());
  const auto got = runtime::transformer_config(model);
  const auto want = runtime::transformer_config(ref);
  CHECK(got.num_layers == want.num_layers);
  CHECK(got.num_single_layers == want.num_single_layers);
  CHECK(got.inner_dim() == want.inner_dim());
  CHECK(got.joint_attention_dim == want.joint_attention_dim);
  CHECK(runtime::read_component(model.text_encoder_2, false).begin()->second.scalar_type() == at::kFloat8_e4m3fn);
  CHECK(runtime::read_component(model.text_encoder, false).begin()->second.scalar_type() == at::kHalf);
}

TEST_CASE("the split NF4 weights of a Forge file dequantize to bitsandbytes' rows of the fused weights", "[forge]") {
  const ForgeCase c = GENERATE(kV1, kV2);
  INFO(c.folder);
  const auto model = runtime::locate_model(forge_file(c).string());
  const nn::TensorMap weights = runtime::read_component(model.transformer);
  const nn::TensorMap reference =
      nn::read_safetensors({test::require_generated(reference_dir(c) / "nf4_reference.safetensors").string()});
  const auto linears = nf4_linears(weights);
  REQUIRE(linears.size() == reference.size());
  int nested = 0;
  for (const auto& p : linears) {
    INFO(p);
    std::set<std::string> used;
    const quant::Nf4Tensor w = nn::read_bnb_nf4(weights, p, &used);
    nested += w.is_nested() ? 1 : 0;
    CHECK(at::equal(quant::dequantize_nf4(w, at::kBFloat16), reference.at(p + ".weight")));
  }
  // v1: Linears that were not fused keep their 8-bit absmax (the tiny fused parts cannot: 16 blocks each).
  CHECK((nested > 0) == (std::string(c.folder) == kV1.folder));
  // Biases of fused layers are split too; dense names are the diffusers ones.
  CHECK(weights.count("transformer_blocks.0.attn.add_v_proj.bias") == 1);
  CHECK(weights.count("single_transformer_blocks.1.proj_mlp.bias") == 1);
}

TEST_CASE("a Forge NF4 file renders exactly what its reference diffusers folder renders", "[forge]") {
  const ForgeCase c = GENERATE(kV1, kV2);
  INFO(c.folder);
  const at::Tensor forge = render(forge_file(c).string());
  const at::Tensor folder = render((reference_dir(c) / "diffusers").string());
  REQUIRE(forge.sizes() == folder.sizes());
  // Same dequantized weights, same fp8 / fp16 values widened exactly: the same computation.
  CHECK(at::equal(forge, folder));
}

TEST_CASE("a malformed Forge NF4 file is a ModelError naming the file and the key", "[forge]") {
  const fs::path source = forge_file(kV1);
  const nn::TensorMap original = nn::read_safetensors({source.string()});
  const std::string qkv = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight";
  const std::string lin1 = "model.diffusion_model.single_blocks.1.linear1.weight";

  auto state_json = [](const std::string& text) {
    return at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, at::kByte).clone();
  };
  struct Lie {
    const char* what;
    std::function<void(nn::TensorMap&)> edit;
    std::string key;  // the message must name it
  };
  const std::vector<Lie> lies = {
      {"truncated absmax", [&](nn::TensorMap& m) { m[qkv + ".absmax"] = m[qkv + ".absmax"].narrow(0, 0, 10).clone(); },
       qkv + ".absmax"},
      {"quant_state shape unlike the packed bytes",
       [&](nn::TensorMap& m) {
         m[qkv + ".quant_state.bitsandbytes__nf4"] = state_json(
             R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [97, 32], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1})");
       },
       qkv},
      {"quant_state shape that does not split into q, k, v",
       [&](nn::TensorMap& m) {
         m[qkv + ".quant_state.bitsandbytes__nf4"] = state_json(
             R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1})");
       },
       "double_blocks.0.img_attn.qkv.weight"},
      {"missing nested_absmax", [&](nn::TensorMap& m) { m.erase(lin1 + ".nested_absmax"); }, lin1 + ".nested_absmax"},
      {"missing quant_state", [&](nn::TensorMap& m) { m.erase(lin1 + ".quant_state.bitsandbytes__nf4"); },
       lin1 + ".quant_state.bitsandbytes__nf4"},
      {"not JSON", [&](nn::TensorMap& m) { m[qkv + ".quant_state.bitsandbytes__nf4"] = state_json("{nf4"); },
       qkv + ".quant_state.bitsandbytes__nf4"},
  };
  for (const auto& lie : lies) {
    INFO(lie.what);
    test::TempDir dir;
    nn::TensorMap edited = original;
    lie.edit(edited);
    const fs::path file = dir / kV1.file;
    nn::write_safetensors(file.string(), edited);
    for (const char* tok : {"tokenizer", "tokenizer_2"}) fs::create_directory_symlink(source.parent_path() / tok, dir / tok);
    const auto model = runtime::locate_model(file.string());
    // Shapes alone (inspect) must not crash.
    CHECK_NOTHROW(runtime::component_shapes(model.transformer));
    // The key named without the file prefix; the file named as given.
    std::string bare = lie.key;
    if (bare.rfind("model.diffusion_model.", 0) == 0) bare = bare.substr(22);
    std::string message;
    try {
      runtime::read_component(model.transformer);
    } catch (const ModelError& e) {
      message = e.what();
    }
    UNSCOPED_INFO(message);
    CHECK_THAT(message, ContainsSubstring(file.string()) && ContainsSubstring(bare));
  }
}
