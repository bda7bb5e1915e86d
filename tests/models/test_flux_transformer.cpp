// FluxTransformer2DModel against diffusers: parameter names equal the checkpoint keys, and one forward
// on the tiny models equals the reference output (tests/golden/<variant>/transformer.safetensors).
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/weights.h"
#include "test_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using fluxbatch::models::flux::FluxConfig;
using fluxbatch::models::flux::FluxTransformer2DModel;
using fluxbatch::nn::TensorMap;

fs::path transformer_dir(const std::string& variant) {
  return fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) /
                                            ("tiny-flux-" + variant) / "transformer");
}
fs::path golden_file(const std::string& variant) {
  return fluxbatch::test::require_generated(fs::path(FLUXBATCH_GOLDEN_DIR) / variant /
                                            "transformer.safetensors");
}

TensorMap read(const fs::path& file) { return fluxbatch::nn::read_safetensors({file.string()}); }

FluxTransformer2DModel load_model(const std::string& variant, at::ScalarType dtype = at::kFloat) {
  const fs::path dir = transformer_dir(variant);
  FluxTransformer2DModel model(FluxConfig::from_json_file((dir / "config.json").string()),
                               at::TensorOptions().dtype(dtype));
  fluxbatch::nn::LoadOptions options;
  options.dtype = dtype;
  options.what = "transformer (" + dir.string() + ")";
  fluxbatch::nn::load_state(*model, read(dir / "diffusion_pytorch_model.safetensors"), options);
  return model;
}

at::Tensor run(const FluxTransformer2DModel& model, const TensorMap& g, at::ScalarType dtype) {
  const auto guidance = g.count("guidance") ? g.at("guidance") : at::Tensor();
  return model->forward(g.at("hidden_states").to(dtype), g.at("encoder_hidden_states").to(dtype),
                        g.at("pooled_projections").to(dtype), g.at("timestep"), g.at("img_ids"), g.at("txt_ids"),
                        guidance);
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

}  // namespace

TEST_CASE("FLUX transformer parameters are exactly the diffusers checkpoint keys", "[flux]") {
  const std::string variant = GENERATE("dev", "schnell");
  CAPTURE(variant);
  const fs::path dir = transformer_dir(variant);
  const FluxTransformer2DModel model(FluxConfig::from_json_file((dir / "config.json").string()));
  const TensorMap checkpoint = read(dir / "diffusion_pytorch_model.safetensors");

  std::map<std::string, std::vector<int64_t>> ours;
  for (const auto& p : model->named_parameters()) ours[p.key()] = p.value().sizes().vec();
  std::map<std::string, std::vector<int64_t>> theirs;
  for (const auto& [name, t] : checkpoint) theirs[name] = t.sizes().vec();
  CHECK(ours == theirs);
  CHECK(model->named_buffers().is_empty());
  CHECK(ours.count("time_text_embed.guidance_embedder.linear_1.weight") == (variant == "dev" ? 1u : 0u));
  CHECK(ours.count("transformer_blocks.1.attn.to_out.0.weight") == 1);
  CHECK(ours.count("transformer_blocks.0.ff_context.net.0.proj.bias") == 1);
}

TEST_CASE("FLUX transformer fp32 CPU forward equals diffusers", "[flux]") {
  const std::string variant = GENERATE("dev", "schnell");
  CAPTURE(variant);
  at::InferenceMode guard;
  const TensorMap golden = read(golden_file(variant));
  CHECK(golden.count("guidance") == (variant == "dev" ? 1u : 0u));
  const auto model = load_model(variant);
  const at::Tensor out = run(model, golden, at::kFloat);
  const at::Tensor& expected = golden.at("output");
  REQUIRE(out.sizes() == expected.sizes());
  REQUIRE(out.scalar_type() == at::kFloat);
  const double scale = max_abs(expected);
  const double err = max_abs(out - expected);
  CAPTURE(scale, err);
  CHECK(scale > 0.1);
  CHECK(err < 1e-5 * scale);
}

TEST_CASE("FLUX transformer bf16 CPU forward stays within bf16 tolerance of fp32", "[flux]") {
  const std::string variant = GENERATE("dev", "schnell");
  CAPTURE(variant);
  at::InferenceMode guard;
  const TensorMap golden = read(golden_file(variant));
  const at::Tensor out = run(load_model(variant, at::kBFloat16), golden, at::kBFloat16);
  REQUIRE(out.scalar_type() == at::kBFloat16);

  // A bf16 run sees bf16-rounded inputs and, by design, bf16-rounded timestep*1000 and guidance*1000
  // (guidance 5.0 -> 4992): give the fp32 reference the same conditioning, so that only the bf16
  // arithmetic differs. (The fp32 model equals diffusers exactly, see above.)
  TensorMap rounded = golden;
  for (const char* name : {"hidden_states", "encoder_hidden_states", "pooled_projections"}) {
    rounded[name] = golden.at(name).to(at::kBFloat16).to(at::kFloat);
  }
  for (const char* name : {"timestep", "guidance"}) {
    if (!golden.count(name)) continue;
    rounded[name] = ((golden.at(name).to(at::kBFloat16) * 1000).to(at::kDouble) / 1000).to(at::kFloat);
  }
  const at::Tensor expected = run(load_model(variant), rounded, at::kFloat);
  const at::Tensor diff = out.to(at::kFloat) - expected;
  const double rel_rms = (diff.pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item<double>();
  const double rel_max = max_abs(diff) / max_abs(expected);
  CAPTURE(rel_rms, rel_max);
  CHECK(rel_rms < 2e-2);  // measured 5.5e-3 on the tiny models (1.1e-2 with larger random weights)
  CHECK(rel_max < 4e-2);  // measured 6.5e-3 (2.2e-2)
  CHECK(rel_rms > 0);       // it really ran in bf16
}

TEST_CASE("FLUX transformer rounds timestep and guidance to the model dtype before scaling", "[flux]") {
  at::InferenceMode guard;
  const TensorMap golden = read(golden_file("dev"));
  // The conditioning vector for (sigma, guidance) = (0.98841, 3.5) and (0.9875, 3.505): the same after the
  // reference's bf16 rounding (988 and 3504), different in fp32.
  const auto temb_for = [&](FluxTransformer2DModel model, at::ScalarType dtype, double t, double g) {
    at::Tensor temb;
    model->set_trace([&](const std::string& name, const at::Tensor& value) {
      if (name == "time_text_embed") temb = value;
    });
    TensorMap inputs = golden;
    inputs["timestep"] = at::full({2}, t, at::kFloat);
    inputs["guidance"] = at::full({2}, g, at::kFloat);
    run(model, inputs, dtype);
    model->set_trace(nullptr);
    return temb;
  };
  auto bf16 = load_model("dev", at::kBFloat16);
  CHECK(at::equal(temb_for(bf16, at::kBFloat16, 0.98841, 3.5), temb_for(bf16, at::kBFloat16, 0.9875, 3.505)));
  auto fp32 = load_model("dev");
  CHECK_FALSE(at::equal(temb_for(fp32, at::kFloat, 0.98841, 3.5), temb_for(fp32, at::kFloat, 0.9875, 3.505)));
}

TEST_CASE("FLUX transformer trace names the block outputs in order", "[flux]") {
  at::InferenceMode guard;
  const TensorMap golden = read(golden_file("dev"));
  auto model = load_model("dev");
  const at::Tensor untraced = run(model, golden, at::kFloat);
  std::vector<std::string> names;
  model->set_trace([&](const std::string& name, const at::Tensor&) { names.push_back(name); });
  const at::Tensor out = run(model, golden, at::kFloat);
  std::vector<std::string> expected = {"x_embedder", "time_text_embed", "context_embedder"};
  for (int64_t i = 0; i < model->config().num_layers; ++i) {
    expected.push_back("transformer_blocks." + std::to_string(i));
    expected.push_back("transformer_blocks." + std::to_string(i) + ".context");
  }
  for (int64_t i = 0; i < model->config().num_single_layers; ++i) {
    expected.push_back("single_transformer_blocks." + std::to_string(i));
  }
  expected.push_back("norm_out");
  CHECK(names == expected);
  CHECK(at::equal(out, untraced));  // tracing does not change the result
}

TEST_CASE("FLUX transformer rejects inputs that do not fit its config", "[flux]") {
  using Catch::Matchers::ContainsSubstring;
  at::InferenceMode guard;
  const TensorMap golden = read(golden_file("dev"));
  const FluxConfig config = FluxConfig::from_json_file((transformer_dir("dev") / "config.json").string());
  const FluxTransformer2DModel dev(config);
  TensorMap inputs = golden;

  SECTION("guidance missing on a guidance-distilled model") {
    inputs.erase("guidance");
    CHECK_THROWS_WITH(run(dev, inputs, at::kFloat), ContainsSubstring("guidance must be [2]"));
  }
  SECTION("guidance given to a model without a guidance embedder") {
    FluxConfig schnell_config = config;
    schnell_config.guidance_embeds = false;
    const FluxTransformer2DModel schnell(schnell_config);
    CHECK_THROWS_AS(run(schnell, inputs, at::kFloat), fluxbatch::InputError);
    CHECK_THROWS_WITH(run(schnell, inputs, at::kFloat), ContainsSubstring("guidance_embeds is false"));
  }
  SECTION("wrong latent channels") {
    inputs["hidden_states"] = at::zeros({2, 24, 16});
    CHECK_THROWS_WITH(run(dev, inputs, at::kFloat), ContainsSubstring("hidden_states must be [B, S, 64]"));
  }
  SECTION("img_ids not matching the image tokens") {
    inputs["img_ids"] = at::zeros({5, 3});
    CHECK_THROWS_WITH(run(dev, inputs, at::kFloat), ContainsSubstring("img_ids must be [24, 3]"));
  }
  SECTION("batch mismatch in the text embeddings") {
    inputs["encoder_hidden_states"] = at::zeros({1, 24, 32});
    CHECK_THROWS_AS(run(dev, inputs, at::kFloat), fluxbatch::InputError);
  }
}

TEST_CASE("FLUX transformer refuses a config whose RoPE axes do not fill the head", "[flux]") {
  using Catch::Matchers::ContainsSubstring;
  FluxConfig config;
  config.num_layers = 1;
  config.num_single_layers = 1;
  config.num_attention_heads = 2;
  config.attention_head_dim = 16;
  config.axes_dims_rope = {4, 6, 8};
  CHECK_THROWS_AS(FluxTransformer2DModel(config), fluxbatch::ModelError);
  CHECK_THROWS_WITH(FluxTransformer2DModel(config), ContainsSubstring("sum of \"axes_dims_rope\" (18)"));
  config.axes_dims_rope = {4, 5, 7};
  CHECK_THROWS_WITH(FluxTransformer2DModel(config), ContainsSubstring("even"));
}
