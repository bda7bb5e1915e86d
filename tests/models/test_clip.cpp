// CLIP text model against transformers: key names, EOS pooling rules, fp32 / bf16 golden outputs.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/clip/clip_text_model.h"
#include "test_t5_clip_vae_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using namespace fluxbatch;
using namespace fluxbatch::test::encoders;
using fluxbatch::models::clip::ClipTextModel;

namespace {

nn::TensorMap clip_weights(const std::filesystem::path& folder) {
  auto weights = read_component_weights(folder);
  models::clip::canonicalize_clip_checkpoint(weights);
  return weights;
}

ClipTextModel load_clip(const std::string& variant, at::ScalarType dtype, c10::Device device = c10::Device(c10::kCPU)) {
  const auto folder = model_dir(variant, "text_encoder");
  ClipTextModel model(models::clip::ClipTextConfig::from_json_file(config_json(folder)),
                      at::TensorOptions().dtype(dtype).device(device));
  load_weights(*model, clip_weights(folder), dtype, models::clip::clip_ignored_prefixes(), device);
  return model;
}

ClipTextModel random_clip(int64_t eos_token_id) {
  models::clip::ClipTextConfig config;
  config.vocab_size = 49408;
  config.hidden_size = 8;
  config.intermediate_size = 12;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 16;
  config.eos_token_id = eos_token_id;
  ClipTextModel model(config);
  at::NoGradGuard no_grad;
  at::manual_seed(0);
  for (auto& p : model->parameters()) p.normal_();
  return model;
}

}  // namespace

TEST_CASE("CLIP parameter names equal the checkpoint keys", "[clip]") {
  const std::string variant = GENERATE("dev", "schnell");
  const auto folder = model_dir(variant, "text_encoder");
  ClipTextModel model(models::clip::ClipTextConfig::from_json_file(config_json(folder)));
  CHECK(parameter_names(*model) == checkpoint_names(clip_weights(folder), models::clip::clip_ignored_prefixes()));
  CHECK(model->named_parameters().contains("text_model.embeddings.token_embedding.weight"));
  CHECK(model->named_parameters().contains("text_model.encoder.layers.0.self_attn.out_proj.bias"));
  CHECK(model->named_parameters().contains("text_model.final_layer_norm.weight"));
}

TEST_CASE("CLIP BFL single file clip_l.safetensors has the same names", "[clip]") {
  ClipTextModel model(models::clip::ClipTextConfig::from_json_file(config_json(model_dir("dev", "text_encoder"))));
  auto weights = read_tensors(model_dir("dev-bfl", "clip_l.safetensors"));
  models::clip::canonicalize_clip_checkpoint(weights);
  CHECK(parameter_names(*model) == checkpoint_names(weights, models::clip::clip_ignored_prefixes()));
}

TEST_CASE("CLIP checkpoints saved without text_model. load under the classic names", "[clip]") {
  nn::TensorMap weights{{"embeddings.token_embedding.weight", at::ones({2})},
                        {"encoder.layers.0.mlp.fc1.bias", at::ones({2})},
                        {"final_layer_norm.weight", at::ones({2})},
                        {"text_model.final_layer_norm.bias", at::ones({2})},
                        {"text_projection.weight", at::ones({2})}};
  models::clip::canonicalize_clip_checkpoint(weights);
  CHECK(weights.count("text_model.embeddings.token_embedding.weight") == 1);
  CHECK(weights.count("text_model.encoder.layers.0.mlp.fc1.bias") == 1);
  CHECK(weights.count("text_model.final_layer_norm.weight") == 1);
  CHECK(weights.count("text_model.final_layer_norm.bias") == 1);
  CHECK(weights.count("text_projection.weight") == 1);
  CHECK(weights.size() == 5);

  nn::TensorMap clash{{"final_layer_norm.weight", at::ones({2})}, {"text_model.final_layer_norm.weight", at::ones({2})}};
  CHECK_THROWS_AS(models::clip::canonicalize_clip_checkpoint(clash), ModelError);
}

TEST_CASE("CLIP pools at the first EOS under both eos_token_id rules", "[clip]") {
  // Row 0: EOS at 3 then padding EOS; row 1: EOS last; row 2: empty prompt. The legacy argmax rule
  // (eos_token_id 2) lands on the first 49407 as the explicit rule does.
  at::Tensor ids = at::tensor({49406, 7, 9, 49407, 49407, 49407,  //
                    49406, 5, 6, 8, 10, 49407,         //
                    49406, 49407, 49407, 49407, 49407, 49407},
                   at::kLong)
            .view({3, 6});
  const std::vector<int64_t> first_eos = {3, 5, 1};
  for (int64_t eos_token_id : {int64_t{2}, int64_t{49407}}) {
    INFO("eos_token_id " << eos_token_id);
    auto model = random_clip(eos_token_id);
    at::NoGradGuard no_grad;
    auto out = model->forward(ids);
    REQUIRE(out.pooler_output.sizes() == at::IntArrayRef({3, 8}));
    for (int64_t row = 0; row < 3; ++row) {
      CHECK(at::equal(out.pooler_output[row], out.last_hidden_state[row][first_eos[row]]));
    }
  }
}

TEST_CASE("CLIP attention is causal: a token ignores everything after it", "[clip]") {
  auto model = random_clip(2);
  at::NoGradGuard no_grad;
  at::Tensor a = at::tensor({49406, 11, 12, 49407, 300, 301}, at::kLong).view({1, 6});
  at::Tensor b = at::tensor({49406, 11, 12, 49407, 999, 998}, at::kLong).view({1, 6});
  at::Tensor ha = model->forward(a).last_hidden_state, hb = model->forward(b).last_hidden_state;
  CHECK(at::equal(ha.slice(1, 0, 4), hb.slice(1, 0, 4)));
  CHECK_FALSE(at::equal(ha.slice(1, 4), hb.slice(1, 4)));
}

TEST_CASE("CLIP rejects sequences longer than the position table", "[clip]") {
  auto model = random_clip(2);
  CHECK_THROWS_WITH(model->forward(at::zeros({1, 17}, at::kLong)),
                    Catch::Matchers::ContainsSubstring("exceeds max_position_embeddings 16"));
}

TEST_CASE("CLIP fp32 CPU output matches the transformers golden", "[clip]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "clip.safetensors"));
  auto model = load_clip(variant, at::kFloat);
  at::NoGradGuard no_grad;
  auto out = model->forward(golden.at("input_ids"));
  const at::Tensor& hidden = golden.at("last_hidden_state");
  const at::Tensor& pooled = golden.at("pooler_output");
  REQUIRE(out.last_hidden_state.sizes() == hidden.sizes());
  REQUIRE(out.pooler_output.sizes() == pooled.sizes());
  // Same ATen ops in the same order (bit-identical here); the margin covers thread-count dependent
  // fp32 reductions.
  CHECK(max_abs_diff(out.last_hidden_state, hidden) <= 1e-5 * std::max(1.0, max_abs(hidden)));
  CHECK(max_abs_diff(out.pooler_output, pooled) <= 1e-5 * std::max(1.0, max_abs(pooled)));
}

TEST_CASE("CLIP bf16 CPU output is within bf16 tolerance of the fp32 golden", "[clip]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "clip.safetensors"));
  auto model = load_clip(variant, at::kBFloat16);
  at::NoGradGuard no_grad;
  auto out = model->forward(golden.at("input_ids"));
  CHECK(out.last_hidden_state.scalar_type() == at::kBFloat16);
  const at::Tensor& hidden = golden.at("last_hidden_state");
  const at::Tensor& pooled = golden.at("pooler_output");
  // bf16: 2^-8 relative rounding per op, a few ulps of the largest activation after two layers
  // (measured ~1% of the peak).
  CHECK(max_abs_diff(out.last_hidden_state, hidden) <= 4e-2 * max_abs(hidden));
  CHECK(max_abs_diff(out.pooler_output, pooled) <= 4e-2 * max_abs(pooled));
}

TEST_CASE("CLIP on CUDA (bf16, fp32) stays within tolerance of the golden", "[.][cuda]") {
  const c10::Device device = cuda_device();
  auto golden = read_tensors(golden_file("dev", "clip.safetensors"));
  at::NoGradGuard no_grad;
  for (auto [dtype, tolerance] : {std::pair{at::kBFloat16, 4e-2}, std::pair{at::kFloat, 1e-3}}) {
    INFO("dtype " << dtype);
    auto model = load_clip("dev", dtype, device);
    auto out = model->forward(golden.at("input_ids").to(device));
    CHECK(out.pooler_output.device() == device);
    CHECK(max_abs_diff(out.last_hidden_state, golden.at("last_hidden_state")) <=
          tolerance * max_abs(golden.at("last_hidden_state")));
    CHECK(max_abs_diff(out.pooler_output, golden.at("pooler_output")) <= tolerance * max_abs(golden.at("pooler_output")));
  }
}
