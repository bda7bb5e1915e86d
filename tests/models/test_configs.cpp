#include "fluxbatch/core/error.h"
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/models/vae/config.h"
#include "test_support.h"

#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
using namespace fluxbatch::models;

namespace {
const std::filesystem::path kModels = FLUXBATCH_MODELS_DIR;
}

TEST_CASE("config.json files of the tiny models parse to their values", "[model_files][configs]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const auto f = flux::FluxConfig::from_json_file((dev / "transformer/config.json").string());
  CHECK(f.patch_size == 1);
  CHECK(f.in_channels == 64);
  CHECK(f.out_channels == 64);  // null in the file: diffusers uses in_channels
  CHECK(f.num_layers == 2);
  CHECK(f.num_single_layers == 2);
  CHECK(f.attention_head_dim == 16);
  CHECK(f.num_attention_heads == 2);
  CHECK(f.joint_attention_dim == 32);
  CHECK(f.pooled_projection_dim == 32);
  CHECK(f.guidance_embeds);
  CHECK(f.axes_dims_rope == std::vector<int64_t>{4, 6, 6});
  const auto schnell = test::require_generated(kModels / "tiny-flux-schnell");
  CHECK_FALSE(flux::FluxConfig::from_json_file((schnell / "transformer/config.json").string()).guidance_embeds);

  const auto v = vae::VaeConfig::from_json_file((dev / "vae/config.json").string());
  CHECK(v.latent_channels == 16);
  CHECK(v.out_channels == 3);
  CHECK(v.block_out_channels == std::vector<int64_t>{32, 32, 64, 64});
  CHECK(v.layers_per_block == 1);
  CHECK(v.norm_num_groups == 8);
  CHECK(v.mid_block_add_attention);
  CHECK(v.scaling_factor == 0.3611);
  CHECK(v.shift_factor == 0.1159);
  CHECK(v.scale_factor() == 8);

  const auto c = clip::ClipTextConfig::from_json_file((dev / "text_encoder/config.json").string());
  CHECK(c.vocab_size == 49408);
  CHECK(c.hidden_size == 32);
  CHECK(c.intermediate_size == 37);
  CHECK(c.num_hidden_layers == 2);
  CHECK(c.num_attention_heads == 2);
  CHECK(c.max_position_embeddings == 77);
  CHECK(c.layer_norm_eps == 1e-5);
  CHECK(c.hidden_act == "quick_gelu");
  CHECK(c.eos_token_id == 2);

  const auto t = t5::T5Config::from_json_file((dev / "text_encoder_2/config.json").string());
  CHECK(t.vocab_size == 1100);
  CHECK(t.d_model == 32);
  CHECK(t.d_kv == 8);
  CHECK(t.d_ff == 64);
  CHECK(t.num_layers == 2);
  CHECK(t.num_heads == 4);
  CHECK(t.relative_attention_num_buckets == 32);
  CHECK(t.relative_attention_max_distance == 128);
  CHECK(t.layer_norm_epsilon == 1e-6);
  CHECK(t.dense_act_fn == "gelu_new");
  CHECK(t.is_gated_act);
}

TEST_CASE("bad config values are ModelErrors naming the file and key", "[model_files][configs]") {
  test::TempDir dir;
  const std::string path = (dir / "config.json").string();
  auto flux_error = [&](const std::string& json) {
    test::write_file(path, json);
    try {
      flux::FluxConfig::from_json_file(path);
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(flux_error(R"({"num_layers": "2"})"),
             ContainsSubstring(path) && ContainsSubstring("\"num_layers\" must be an integer (got \"2\")"));
  CHECK_THAT(flux_error(R"({"guidance_embeds": 1})"), ContainsSubstring("\"guidance_embeds\" must be true or false"));
  CHECK_THAT(flux_error(R"({"axes_dims_rope": [16, 56]})"), ContainsSubstring("\"axes_dims_rope\" must have 3 entries"));
  CHECK_THAT(flux_error(R"({"axes_dims_rope": [16, 56, 58]})"),
             ContainsSubstring("sum of \"axes_dims_rope\" (130) must equal \"attention_head_dim\" (128)"));
  CHECK_THAT(flux_error(R"({"axes_dims_rope": [16, "a", 56]})"), ContainsSubstring("must be a list of integers"));
  CHECK_THAT(flux_error(R"({"num_attention_heads": 0})"), ContainsSubstring("\"num_attention_heads\" must be positive"));
  CHECK_THAT(flux_error(R"({"patch_size": 2})"), ContainsSubstring("\"patch_size\" 2 is not supported"));
  CHECK_THAT(flux_error("{nope"), ContainsSubstring(path) && ContainsSubstring("not valid JSON"));
  CHECK_THAT(flux_error("[1]"), ContainsSubstring("not a JSON object"));
  // Unknown keys are ignored; absent keys keep the FLUX.1-dev defaults.
  CHECK(flux_error(R"({"some_future_key": [1, 2], "_class_name": "FluxTransformer2DModel"})") == "no error");
  CHECK_THROWS_WITH(flux::FluxConfig::from_json_file((dir / "missing.json").string()),
                    ContainsSubstring("missing.json") && ContainsSubstring("cannot open"));

  test::write_file(path, R"({"norm_num_groups": 7})");
  CHECK_THROWS_WITH(vae::VaeConfig::from_json_file(path),
                    ContainsSubstring(path) && ContainsSubstring("not a positive multiple of \"norm_num_groups\" 7"));
  test::write_file(path, R"({"use_post_quant_conv": true})");
  CHECK_THROWS_WITH(vae::VaeConfig::from_json_file(path), ContainsSubstring("\"use_post_quant_conv\" is not supported"));
  test::write_file(path, R"({"block_out_channels": [128, 256], "up_block_types": ["a", "b", "c"]})");
  CHECK_THROWS_WITH(vae::VaeConfig::from_json_file(path), ContainsSubstring("\"up_block_types\" must have 2 entries"));
  test::write_file(path, R"({"shift_factor": null, "scaling_factor": 0.18215})");
  CHECK(vae::VaeConfig::from_json_file(path).shift_factor == 0.0);

  test::write_file(path, R"({"feed_forward_proj": "relu"})");
  const auto relu = t5::T5Config::from_json_file(path);
  CHECK_FALSE(relu.is_gated_act);
  CHECK(relu.dense_act_fn == "relu");
  test::write_file(path, R"({"feed_forward_proj": "gated-gelu_pytorch_tanh"})");
  CHECK(t5::T5Config::from_json_file(path).dense_act_fn == "gelu_pytorch_tanh");
  test::write_file(path, R"({"feed_forward_proj": "weird-gelu"})");
  CHECK_THROWS_WITH(t5::T5Config::from_json_file(path), ContainsSubstring("\"feed_forward_proj\" must be"));
  test::write_file(path, R"({"d_model": 4096.5})");
  CHECK_THROWS_WITH(t5::T5Config::from_json_file(path), ContainsSubstring("\"d_model\" must be an integer"));

  test::write_file(path, R"({"text_config": {"hidden_size": 64, "num_attention_heads": 3}})");
  CHECK_THROWS_WITH(clip::ClipTextConfig::from_json_file(path),
                    ContainsSubstring("\"hidden_size\" 64 is not divisible by \"num_attention_heads\" 3"));
  test::write_file(path, R"({"text_config": {"hidden_size": 64, "num_attention_heads": 4, "eos_token_id": [49407]}})");
  const auto nested = clip::ClipTextConfig::from_json_file(path);
  CHECK(nested.hidden_size == 64);
  CHECK(nested.eos_token_id == 49407);
  test::write_file(path, R"({"hidden_act": "relu"})");
  CHECK_THROWS_WITH(clip::ClipTextConfig::from_json_file(path), ContainsSubstring("\"hidden_act\" \"relu\""));
}
