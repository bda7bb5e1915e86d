// T5 encoder against transformers: key names, bucketing, and the fp32 / bf16 golden outputs.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/t5/t5_encoder.h"
#include "models/t5/t5_layers.h"
#include "test_t5_clip_vae_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using namespace fluxbatch;
using namespace fluxbatch::test::encoders;
using fluxbatch::models::t5::T5EncoderModel;

namespace {

T5EncoderModel load_t5(const std::string& variant, at::ScalarType dtype, c10::Device device = c10::Device(c10::kCPU)) {
  const auto folder = model_dir(variant, "text_encoder_2");
  T5EncoderModel model(models::t5::T5Config::from_json_file(config_json(folder)),
                       at::TensorOptions().dtype(dtype).device(device));
  auto weights = read_component_weights(folder);
  models::t5::canonicalize_t5_checkpoint(weights);
  load_weights(*model, weights, dtype, models::t5::t5_ignored_prefixes(), device);
  return model;
}

}  // namespace

TEST_CASE("T5 parameter names equal the checkpoint keys", "[t5]") {
  const std::string variant = GENERATE("dev", "schnell");
  const auto folder = model_dir(variant, "text_encoder_2");
  T5EncoderModel model(models::t5::T5Config::from_json_file(config_json(folder)));
  auto weights = read_component_weights(folder);
  models::t5::canonicalize_t5_checkpoint(weights);
  CHECK(parameter_names(*model) == checkpoint_names(weights, models::t5::t5_ignored_prefixes()));
  CHECK(model->named_parameters().contains("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  CHECK_FALSE(model->named_parameters().contains("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
  CHECK(model->named_parameters().contains("encoder.block.1.layer.1.DenseReluDense.wi_0.weight"));
}

TEST_CASE("T5 BFL single file t5xxl.safetensors has the same names", "[t5]") {
  T5EncoderModel model(models::t5::T5Config::from_json_file(config_json(model_dir("dev", "text_encoder_2"))));
  auto weights = read_tensors(model_dir("dev-bfl", "t5xxl.safetensors"));
  models::t5::canonicalize_t5_checkpoint(weights);
  CHECK(parameter_names(*model) == checkpoint_names(weights, models::t5::t5_ignored_prefixes()));
}

TEST_CASE("T5 tied embed_tokens is folded into shared.weight", "[t5]") {
  nn::TensorMap only_tied{{"encoder.embed_tokens.weight", at::ones({4, 2})}};
  models::t5::canonicalize_t5_checkpoint(only_tied);
  REQUIRE(only_tied.size() == 1);
  CHECK(only_tied.count("shared.weight") == 1);

  nn::TensorMap both{{"encoder.embed_tokens.weight", at::ones({4, 2})}, {"shared.weight", at::zeros({4, 2})}};
  models::t5::canonicalize_t5_checkpoint(both);
  REQUIRE(both.size() == 1);
  CHECK(both.at("shared.weight").sum().item<float>() == 0.0f);
}

TEST_CASE("T5 relative position buckets match transformers", "[t5]") {
  models::t5::T5Config config;
  config.d_model = 8;
  config.num_heads = 1;
  config.d_kv = 8;
  models::t5::T5Attention attention(config, /*has_relative_attention_bias=*/true, at::kFloat);
  // Bias table = bucket index, so the bias is the bucket itself.
  attention->named_parameters()["relative_attention_bias.weight"].copy_(at::arange(32, at::kFloat).unsqueeze(1));
  const int64_t length = 401;
  at::Tensor bias = attention->compute_bias(length, length);  // [1, 1, L, L]
  REQUIRE(bias.sizes() == at::IntArrayRef({1, 1, length, length}));
  // transformers' _relative_position_bucket(bidirectional, 32 buckets, max distance 128) of these.
  const std::vector<int64_t> relative = {-200, -128, -127, -64, -33, -32, -16, -12, -9, -8, -7, -1, 0,
                                         1,    7,    8,    9,   12,  16,  32,  33,  64,  127, 128, 200};
  const std::vector<int64_t> expected = {15, 15, 15, 14, 12, 12, 10, 9,  8,  8,  7,  1,  0,
                                         17, 23, 24, 24, 25, 26, 28, 28, 30, 31, 31, 31};
  const int64_t query = 200;
  for (size_t i = 0; i < relative.size(); ++i) {
    INFO("relative position " << relative[i]);
    CHECK(bias[0][0][query][query + relative[i]].item<float>() == static_cast<float>(expected[i]));
  }
}

TEST_CASE("T5 fp32 CPU output matches the transformers golden", "[t5]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "t5.safetensors"));
  auto model = load_t5(variant, at::kFloat);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(golden.at("input_ids"));
  const at::Tensor& expected = golden.at("last_hidden_state");
  REQUIRE(out.sizes() == expected.sizes());
  CHECK(out.scalar_type() == at::kFloat);
  // Same ATen ops in the same order (bit-identical here); the margin covers thread-count dependent
  // fp32 reductions.
  const double scale = std::max(1.0, max_abs(expected));
  CHECK(max_abs_diff(out, expected) <= 1e-5 * scale);
}

TEST_CASE("T5 bf16 CPU output is within bf16 tolerance of the fp32 golden", "[t5]") {
  const std::string variant = GENERATE("dev", "schnell");
  auto golden = read_tensors(golden_file(variant, "t5.safetensors"));
  auto model = load_t5(variant, at::kBFloat16);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(golden.at("input_ids"));
  CHECK(out.scalar_type() == at::kBFloat16);
  const at::Tensor& expected = golden.at("last_hidden_state");
  // bf16 keeps 8 mantissa bits (2^-8 relative per op); over two blocks a few ulps of the largest
  // activation accumulate (measured ~1% of the peak).
  CHECK(max_abs_diff(out, expected) <= 4e-2 * max_abs(expected));
}

TEST_CASE("T5 fp16 with wo kept in fp32 follows transformers' dtype flow", "[t5]") {
  const std::string variant = "dev";
  auto golden = read_tensors(golden_file(variant, "t5.safetensors"));
  auto model = load_t5(variant, at::kHalf);
  model->keep_wo_in_float32();
  CHECK(model->named_parameters()["encoder.block.0.layer.1.DenseReluDense.wo.weight"].scalar_type() == at::kFloat);
  CHECK(model->named_parameters()["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].scalar_type() == at::kHalf);
  at::NoGradGuard no_grad;
  at::Tensor out = model->forward(golden.at("input_ids"));
  // The residual stream turns fp32 after the first `wo`; the final norm casts back to fp16.
  CHECK(out.scalar_type() == at::kHalf);
  const at::Tensor& expected = golden.at("last_hidden_state");
  CHECK(max_abs_diff(out, expected) <= 1e-2 * max_abs(expected));
}

TEST_CASE("T5 rejects input_ids that are not [batch, length]", "[t5]") {
  models::t5::T5Config config;
  config.vocab_size = 10;
  config.d_model = 8;
  config.d_kv = 4;
  config.num_heads = 2;
  config.d_ff = 16;
  config.num_layers = 1;
  T5EncoderModel model(config);
  CHECK_THROWS_WITH(model->forward(at::zeros({3}, at::kLong)),
                    Catch::Matchers::ContainsSubstring("input_ids must be [batch, length]"));
}

TEST_CASE("T5 on CUDA (bf16, fp16 with fp32 wo, fp32) stays within tolerance of the golden", "[.][cuda]") {
  const c10::Device device = cuda_device();
  auto golden = read_tensors(golden_file("dev", "t5.safetensors"));
  const at::Tensor& expected = golden.at("last_hidden_state");
  at::NoGradGuard no_grad;
  for (auto [dtype, tolerance] : {std::pair{at::kBFloat16, 4e-2}, std::pair{at::kHalf, 1e-2}, std::pair{at::kFloat, 1e-3}}) {
    INFO("dtype " << dtype);
    auto model = load_t5("dev", dtype, device);
    if (dtype == at::kHalf) model->keep_wo_in_float32();
    at::Tensor out = model->forward(golden.at("input_ids").to(device));
    CHECK(out.device() == device);
    CHECK(max_abs_diff(out, expected) <= tolerance * max_abs(expected));
  }
}
