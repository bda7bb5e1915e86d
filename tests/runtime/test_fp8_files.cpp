// fp8 FLUX files as ComfyUI / Kijai users have them, built by scripts/make_fp8_fixtures.py from the tiny
// dev model: a plain float8_e4m3fn cast (flux1-dev-fp8-e4m3fn + t5xxl_fp8_e4m3fn) and ComfyUI's "scaled
// fp8" (scale_weight per tensor, scale_input, the scaled_fp8 marker; transformer and T5). Each folder's
// reference/ holds w8 * scale in float32 as a diffusers folder: the bf16 path must render exactly what it
// renders, and the fp8 path must hold exactly those weights (natively, without re-quantizing).
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/fp8_state.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/fp8_format.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/model_io/inspect.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "test_support.h"
#include "tiny_render.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <torch/nn/module.h>

#include <filesystem>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;

namespace {

struct Fp8Case {
  const char* folder;
  const char* quantization;  // what model_files reports for the transformer and T5
};
const Fp8Case kPlain{"tiny-flux-dev-fp8", ""};
const Fp8Case kScaled{"tiny-flux-dev-fp8-scaled", "scaled-fp8"};

fs::path folder(const Fp8Case& c) { return test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / c.folder); }

at::Tensor render(const std::string& model, bool quantize_nf4) {
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.quantize_nf4 = quantize_nf4;
  return test::render_tiny(model, options);
}

}  // namespace

TEST_CASE("fp8 single files are located with their storage form, and inspect names it", "[fp8file]") {
  const Fp8Case c = GENERATE(kPlain, kScaled);
  INFO(c.folder);
  const runtime::ModelFiles files = runtime::locate_model(folder(c).string());
  CHECK(files.transformer.dialect == models::KeyDialect::kBfl);
  CHECK(files.transformer.quantization == c.quantization);
  CHECK(files.text_encoder_2.quantization == c.quantization);
  const std::string text = runtime::inspect_model(folder(c).string(), false);
  CHECK_THAT(text, ContainsSubstring(std::string(c.quantization).empty() ? "fp8-e4m3 (" : "scaled-fp8 fp8-e4m3 ("));
}

TEST_CASE("fp8 files render in the dense path exactly what their float32 reference folder renders", "[fp8file]") {
  const Fp8Case c = GENERATE(kPlain, kScaled);
  INFO(c.folder);
  const at::Tensor fp8 = render(folder(c).string(), false);
  const at::Tensor reference = render((folder(c) / "reference").string(), false);
  REQUIRE(fp8.sizes() == reference.sizes());
  CHECK(at::equal(fp8, reference));
}

TEST_CASE("a scaled fp8 file quantizes to NF4 on load as its dequantized reference does", "[fp8file][nf4]") {
  const at::Tensor fp8 = render(folder(kScaled).string(), true);
  const at::Tensor reference = render((folder(kScaled) / "reference").string(), true);
  CHECK(at::equal(fp8, reference));
}

TEST_CASE("fp8 compute keeps an fp8 file's weights as stored: exactly the reference's values", "[fp8file][fp8]") {
  const Fp8Case c = GENERATE(kPlain, kScaled);
  INFO(c.folder);
  at::InferenceMode guard;
  const runtime::ModelFiles files = runtime::locate_model(folder(c).string());
  models::flux::FluxTransformer2DModel model(runtime::transformer_config(files), at::TensorOptions().dtype(at::kFloat));
  nn::LoadOptions load;
  load.dtype = at::kFloat;
  load.what = "transformer";
  const int n = nn::load_state_fp8(*model, runtime::read_component(files.transformer), load,
                                   models::flux::computes_in_fp8);
  CHECK(n > 0);
  const runtime::ModelFiles ref = runtime::locate_model((folder(c) / "reference").string());
  const nn::TensorMap want = runtime::read_component(ref.transformer);
  int compared = 0;
  for (const auto& item : model->named_modules("", false)) {
    const auto* linear = dynamic_cast<const nn::LinearImpl*>(item.value().get());
    if (linear == nullptr || !linear->takes_fp8()) continue;
    INFO(item.key());
    const std::vector<at::Tensor> stored = linear->quantized_tensors();  // fp8 layers: {data, scale}
    REQUIRE(stored.size() == 2);
    const at::Tensor got = quant::dequantize_fp8(quant::Fp8Tensor{stored[0], stored[1]}, at::kFloat);
    CHECK(at::equal(got, want.at(item.key() + ".weight")));
    ++compared;
  }
  CHECK(compared == n);
}

TEST_CASE("a scaled fp8 weight's scale must be one positive value; the error names the key", "[fp8file]") {
  torch::nn::Module module;
  module.register_module("lin", nn::Linear(nn::LinearImpl(4, 3, true, at::TensorOptions().dtype(at::kFloat))));
  nn::TensorMap weights{{"lin.weight", at::ones({3, 4}).to(at::kFloat8_e4m3fn)}, {"lin.bias", at::zeros({3})}};
  nn::LoadOptions load;
  load.what = "test";
  SECTION("a good scale multiplies, scale_input is accepted and unused") {
    weights["lin.scale_weight"] = at::full({}, 0.5);
    weights["lin.scale_input"] = at::full({}, 3.0);
    nn::load_state(module, weights, load);
    CHECK(at::equal(module.named_parameters()["lin.weight"], at::full({3, 4}, 0.5)));
  }
  SECTION("negative") {
    weights["lin.scale_weight"] = at::full({}, -0.5);
    CHECK_THROWS_WITH(nn::load_state(module, weights, load), ContainsSubstring("lin.scale_weight"));
  }
  SECTION("not one value") {
    weights["lin.scale_weight"] = at::full({2}, 0.5);
    CHECK_THROWS_AS(nn::load_state(module, weights, load), ModelError);
  }
  SECTION("a scale without its weight is unexpected") {
    weights["other.scale_weight"] = at::full({}, 0.5);
    CHECK_THROWS_WITH(nn::load_state(module, weights, load), ContainsSubstring("unexpected: other.scale_weight"));
  }
}
