// Loading bitsandbytes-serialized NF4 Linears: the tiny FLUX.1-dev transformer quantized by bitsandbytes
// (scripts/make_nf4_models.py) and hand-made checkpoints that lie in one field each.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/ops/nf4_dequantize.h"
#include "fluxbatch/quant/nf4_format.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <torch/nn/module.h>

#include <cstdio>
#include <filesystem>
#include <string>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
namespace fs = std::filesystem;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

at::Tensor utf8(const std::string& text) {
  return at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, at::kByte).clone();
}

// The keys Linear4bit._save_to_state_dict writes for `w` under "<p>.weight".
void add_bnb(nn::TensorMap& map, const std::string& p, const quant::Nf4Tensor& w, const std::string& json) {
  map[p + ".weight"] = w.packed.reshape({-1, 1});
  map[p + ".weight.quant_map"] = at::tensor(std::vector<float>(quant::kNf4Code.begin(), quant::kNf4Code.end()));
  if (w.is_nested()) {
    map[p + ".weight.absmax"] = w.q8;
    map[p + ".weight.nested_absmax"] = w.nested_absmax;
    map[p + ".weight.nested_quant_map"] = w.nested_quant_map;
  } else {
    map[p + ".weight.absmax"] = w.absmax;
  }
  map[p + ".weight.quant_state.bitsandbytes__nf4"] = utf8(json);
}

std::string plain_json(int64_t out, int64_t in, int64_t blocksize = 64, const std::string& type = "nf4") {
  return "{\"quant_type\": \"" + type + "\", \"blocksize\": " + std::to_string(blocksize) +
         ", \"dtype\": \"bfloat16\", \"shape\": [" + std::to_string(out) + ", " + std::to_string(in) + "]}";
}

struct Model : torch::nn::Module {
  Model() {
    proj = register_module("proj", nn::Linear(128, 6, true, at::kFloat));
    other = register_module("other", nn::Linear(64, 2, false, at::kFloat));
  }
  nn::Linear proj{nullptr}, other{nullptr};
};

struct Checkpoint {
  quant::Nf4Tensor w;
  nn::TensorMap map;
};

Checkpoint valid_checkpoint(bool nested) {
  at::manual_seed(3);
  Checkpoint c;
  c.w = quant::quantize_nf4(at::randn({6, 128}).to(at::kBFloat16), nested, quant::BnbBackend::kCpu);
  std::string json = plain_json(6, 128);
  if (nested) {
    json.pop_back();
    char offset[32];
    std::snprintf(offset, sizeof offset, "%.9g", static_cast<double>(c.w.offset));  // round-trips a float
    json += ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": " +
            std::string(offset) + "}";
  }
  add_bnb(c.map, "proj", c.w, json);
  c.map["proj.bias"] = at::randn({6});
  c.map["other.weight"] = at::randn({2, 64});
  return c;
}

nn::LoadOptions cpu_options() {
  nn::LoadOptions o;
  o.what = "test model";
  return o;
}

void expect_error(const nn::TensorMap& map, const std::string& key, const std::string& detail) {
  Model m;
  CHECK_THROWS_AS(nn::load_nf4_state(m, map, cpu_options()), ModelError);
  Model fresh;
  CHECK_THROWS_WITH(nn::load_nf4_state(fresh, map, cpu_options()), ContainsSubstring(key) && ContainsSubstring(detail));
}

}  // namespace

TEST_CASE("load_nf4_state installs NF4 weights and keeps the dense ones", "[nf4load]") {
  const bool nested = GENERATE(false, true);
  Checkpoint c = valid_checkpoint(nested);
  Model m;
  auto scratch = nn::load_nf4_state(m, c.map, cpu_options());
  REQUIRE(scratch);
  REQUIRE(m.proj->is_nf4());
  CHECK_FALSE(m.other->is_nf4());
  CHECK_FALSE(m.proj->weight.defined());
  // named_parameters() lists what still is dense: the NF4 weight is gone, the rest keeps its name.
  std::vector<std::string> names;
  for (const auto& item : m.named_parameters()) names.push_back(item.key());
  CHECK(names == std::vector<std::string>{"proj.bias", "other.weight"});
  CHECK(at::equal(m.other->weight, c.map.at("other.weight")));
  CHECK(at::equal(ops::nf4_dequantize(m.proj->nf4()), quant::dequantize_nf4(c.w, at::kBFloat16)));

  const at::Tensor x = at::randn({3, 5, 128});
  const at::Tensor want = at::linear(x, quant::dequantize_nf4(c.w, at::kBFloat16).to(at::kFloat), c.map.at("proj.bias"));
  CHECK(at::allclose(m.proj->forward(x), want, 1e-6, 1e-6));
  CHECK(scratch->defined());  // the layers' shared buffer held the dequantized weight
}

TEST_CASE("a module without NF4 keys loads as with load_state", "[nf4load]") {
  Model m;
  nn::TensorMap map{{"proj.weight", at::randn({6, 128})}, {"proj.bias", at::randn({6})},
                    {"other.weight", at::randn({2, 64})}};
  CHECK_FALSE(nn::load_nf4_state(m, map, cpu_options()));
  CHECK_FALSE(nn::has_bnb_quant_state(map));
  CHECK(at::equal(m.proj->weight, map.at("proj.weight")));
  CHECK(at::equal(m.proj->forward(at::ones({1, 128})), at::linear(at::ones({1, 128}), map.at("proj.weight"),
                                                                  map.at("proj.bias"))));
}

TEST_CASE("every lie in a bitsandbytes NF4 checkpoint is a ModelError naming the key", "[nf4load]") {
  const std::string state = "proj.weight.quant_state.bitsandbytes__nf4";
  Checkpoint plain = valid_checkpoint(false);
  Checkpoint nested = valid_checkpoint(true);
  auto with = [](Checkpoint c, const std::string& key, const at::Tensor& t) {
    c.map[key] = t;
    return c.map;
  };
  auto without = [](Checkpoint c, const std::string& key) {
    c.map.erase(key);
    return c.map;
  };
  SECTION("shape unlike the layer's") {
    expect_error(with(plain, state, utf8(plain_json(128, 6))), "proj.weight", "does not match the layer's [6, 128]");
  }
  SECTION("blocksize other than 64") {
    expect_error(with(plain, state, utf8(plain_json(6, 128, 128))), state, "blocksize 128");
  }
  SECTION("quant_type fp4") { expect_error(with(plain, state, utf8(plain_json(6, 128, 64, "fp4"))), state, "fp4"); }
  SECTION("not JSON") { expect_error(with(plain, state, utf8("{\"quant_type\": \"nf4\", ")), state, "not valid JSON"); }
  SECTION("JSON that is not an object") { expect_error(with(plain, state, utf8("[1, 2]")), state, "JSON object"); }
  SECTION("a missing field") {
    expect_error(with(plain, state, utf8("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"shape\": [6, 128]}")), state,
                 "lacks \"dtype\"");
  }
  SECTION("an unknown field") {
    expect_error(with(plain, state, utf8(plain_json(6, 128).substr(0, plain_json(6, 128).size() - 1) + ", \"x\": 1}")),
                 state, "unexpected quant state field \"x\"");
  }
  SECTION("shape of the wrong rank or sign") {
    expect_error(with(plain, state, utf8("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
                                         "\"shape\": [768]}")),
                 state, "[out_features, in_features]");
    expect_error(with(plain, state, utf8("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
                                         "\"shape\": [-6, 128]}")),
                 state, "positive integer");
  }
  SECTION("unsupported dtype") {
    std::string j = plain_json(6, 128);
    j.replace(j.find("bfloat16"), 8, "int8");
    expect_error(with(plain, state, utf8(j)), state, "unsupported dtype \"int8\"");
  }
  SECTION("truncated absmax") {
    expect_error(with(plain, "proj.weight.absmax", plain.w.absmax.narrow(0, 0, 11)), "proj.weight.absmax",
                 "11 values, expected 12");
  }
  SECTION("absmax of the wrong dtype") {
    expect_error(with(plain, "proj.weight.absmax", plain.w.absmax.to(at::kHalf)), "proj.weight.absmax", "dtype");
  }
  SECTION("missing absmax") { expect_error(without(plain, "proj.weight.absmax"), "proj.weight.absmax", "missing"); }
  SECTION("packed bytes of the wrong count") {
    expect_error(with(plain, "proj.weight", plain.w.packed.narrow(0, 0, 100)), "proj.weight", "expected 384");
  }
  SECTION("a quant_map that is not the NF4 table") {
    expect_error(with(plain, "proj.weight.quant_map", at::linspace(-1, 1, 16)), "proj.weight.quant_map",
                 "NF4 code table");
    expect_error(with(plain, "proj.weight.quant_map", at::zeros({15})), "proj.weight.quant_map", "expected 16");
  }
  SECTION("nested statistics: partial JSON, missing or truncated tensors") {
    expect_error(with(nested, state, utf8(plain_json(6, 128).substr(0, plain_json(6, 128).size() - 1) +
                                          ", \"nested_offset\": 0.5}")),
                 state, "must come together");
    expect_error(without(nested, "proj.weight.nested_absmax"), "proj.weight.nested_absmax", "missing");
    expect_error(with(nested, "proj.weight.nested_quant_map", nested.w.nested_quant_map.narrow(0, 0, 255)),
                 "proj.weight.nested_quant_map", "255 values, expected 256");
    expect_error(with(nested, "proj.weight.absmax", at::zeros({12})),
                 "proj.weight.absmax", "dtype");  // float absmax where the JSON says nested (uint8 codes)
  }
  SECTION("a quant state for something that is not a Linear") {
    nn::TensorMap map = plain.map;
    map["other.bias.weight.quant_state.bitsandbytes__nf4"] = utf8(plain_json(2, 64));
    expect_error(map, "other.bias.weight.quant_state.bitsandbytes__nf4", "no Linear named other.bias");
  }
  SECTION("an fp4 quant state") {
    nn::TensorMap map = without(plain, state);
    map["proj.weight.quant_state.bitsandbytes__fp4"] = utf8(plain_json(6, 128, 64, "fp4"));
    expect_error(map, "bitsandbytes__fp4", "only bitsandbytes nf4");
  }
  SECTION("a leftover quantization tensor is reported by load_state as unexpected") {
    expect_error(with(plain, "proj.weight.extra", at::zeros({1})), "unexpected: proj.weight.extra", "");
  }
}

TEST_CASE("the tiny transformer quantized by bitsandbytes dequantizes to bitsandbytes' values", "[nf4load]") {
  const std::string folder = GENERATE("tiny-flux-dev-nf4", "tiny-flux-dev-nf4-dq");
  const fs::path root = test::require_generated(kModels / folder);
  const runtime::ModelFiles files = runtime::locate_model(root.string());
  REQUIRE(files.transformer.quantization == "bnb-nf4");
  models::flux::FluxTransformer2DModel model(runtime::transformer_config(files), at::TensorOptions(at::kCPU));
  nn::LoadOptions options;
  options.what = folder;
  nn::load_nf4_state(*model, runtime::read_component(files.transformer), options);

  const nn::TensorMap reference =
      nn::read_safetensors({test::require_generated(root / "reference" / "nf4_reference.safetensors").string()});
  int quantized = 0;
  for (const auto& item : model->named_modules("", false)) {
    auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(item.value());
    if (!linear) continue;
    INFO(item.key());
    REQUIRE(linear->is_nf4());
    CHECK(linear->nf4().is_nested() == (folder == "tiny-flux-dev-nf4-dq"));
    CHECK(at::equal(ops::nf4_dequantize(linear->nf4()), reference.at(item.key() + ".weight")));
    ++quantized;
  }
  CHECK(quantized == 50);
  for (const auto& item : model->named_parameters()) {
    INFO(item.key());
    CHECK(item.value().device().is_cpu());
    CHECK(item.value().scalar_type() == at::kFloat);
  }
}

TEST_CASE("load_state_quantizing_nf4 quantizes every Linear weight of a dense checkpoint", "[nf4load]") {
  at::manual_seed(5);
  nn::TensorMap map{{"proj.weight", at::randn({6, 128})}, {"proj.bias", at::randn({6})},
                    {"other.weight", at::randn({2, 64}).to(at::kBFloat16)}};
  Model m;
  auto scratch = nn::load_state_quantizing_nf4(m, map, cpu_options());
  REQUIRE(scratch);
  REQUIRE(m.proj->is_nf4());
  REQUIRE(m.other->is_nf4());
  std::vector<std::string> names;
  for (const auto& item : m.named_parameters()) names.push_back(item.key());
  CHECK(names == std::vector<std::string>{"proj.bias"});
  CHECK(at::equal(m.proj->bias, map.at("proj.bias")));
  for (const auto& [linear, key] : {std::pair{m.proj, "proj.weight"}, std::pair{m.other, "other.weight"}}) {
    INFO(key);
    CHECK_FALSE(linear->nf4().is_nested());
    CHECK(linear->nf4().dtype == at::kBFloat16);
    const auto want = quant::quantize_nf4(map.at(key).to(at::kBFloat16), false, quant::BnbBackend::kCuda);
    CHECK(at::equal(linear->nf4().packed, want.packed));
    CHECK(at::equal(linear->nf4().absmax, want.absmax));
  }
  // A checkpoint that already is NF4 keeps its weights; a dense layer beside it is quantized.
  Checkpoint c = valid_checkpoint(false);
  Model mixed;
  nn::load_state_quantizing_nf4(mixed, c.map, cpu_options());
  CHECK(at::equal(mixed.proj->nf4().packed, c.w.packed));
  CHECK(mixed.other->is_nf4());
  // A dense weight of the wrong shape is reported by load_state, not quantized.
  map["other.weight"] = at::randn({2, 32});
  Model bad;
  CHECK_THROWS_WITH(nn::load_state_quantizing_nf4(bad, map, cpu_options()),
                    ContainsSubstring("shape mismatch: other.weight"));
}
