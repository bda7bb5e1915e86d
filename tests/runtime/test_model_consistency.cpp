// Components of one model folder must belong together: checked from configs, headers and tokenizers
// before anything loads (runtime/model_io/consistency.h). tests/app/test_cli_hostile_models.cpp asserts
// the exact line the user sees for each committed hostile folder; this file checks every layout the
// project ships passes, and the checks on hand-made mixes.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/model_io/consistency.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"
#include "render_items.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;

namespace {

void check(const fs::path& model_path) {
  const runtime::ModelFiles model = runtime::locate_model(model_path.string());
  const tokenizers::ClipTokenizer clip(model.tokenizer_dir);
  const tokenizers::T5Tokenizer t5(model.tokenizer_2_dir);
  runtime::check_components(model, clip, t5);
}

// A copy of the tiny dev model with `edit` applied to the JSON file `file`.
fs::path edited_copy(const test::TempDir& dir, const std::string& file, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path model = dir / "model";
  fs::copy(test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev"), model, fs::copy_options::recursive);
  nlohmann::json json;
  {
    std::ifstream in(model / file);
    json = nlohmann::json::parse(in);
  }
  edit(json);
  test::write_file(model / file, json.dump());
  return model;
}

std::string error_of(const fs::path& model) {
  try {
    check(model);
  } catch (const ModelError& e) {
    return e.what();
  }
  FAIL("no ModelError for " << model);
  return {};
}

}  // namespace

TEST_CASE("every layout the project ships passes the consistency checks", "[model_files][consistency]") {
  for (const char* name : {"tiny-flux-dev", "tiny-flux-schnell", "tiny-flux-dev-bfl", "tiny-flux-dev-nf4",
                           "tiny-flux-dev-nf4-dq", "tiny-flux-dev-tf5"}) {
    INFO(name);
    CHECK_NOTHROW(check(test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / name)));
  }
  CHECK_NOTHROW(check(test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev-forge-nf4-v1" /
                                              "flux1-dev-bnb-nf4.safetensors")));
  CHECK_NOTHROW(check(test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev-forge-nf4-v2" /
                                              "flux1-dev-bnb-nf4-v2.safetensors")));
}

TEST_CASE("a config that contradicts its own weights is named with them", "[model_files][consistency]") {
  test::TempDir dir;
  const fs::path t5 = edited_copy(dir, "text_encoder_2/config.json", [](nlohmann::json& j) { j["d_model"] = 4096; });
  CHECK(error_of(t5) == t5.string() +
                            ": text_encoder_2/config.json says d_model 4096 but text_encoder_2/model.safetensors has "
                            "shared.weight [1100, 32]: the config and the weights come from different models; put the "
                            "config.json that came with these weights beside them");
  test::TempDir dir2;
  const fs::path flux =
      edited_copy(dir2, "transformer/config.json", [](nlohmann::json& j) { j["joint_attention_dim"] = 4096; });
  CHECK_THAT(error_of(flux), ContainsSubstring("transformer/config.json says joint_attention_dim 4096 but "
                                               "transformer/diffusion_pytorch_model.safetensors has 32"));
}

TEST_CASE("a tokenizer with more ids than its encoder's embedding is refused before loading", "[model_files][consistency]") {
  test::TempDir dir;
  const fs::path model =
      edited_copy(dir, "tokenizer_2/tokenizer_config.json", [](nlohmann::json& j) { j["extra_ids"] = 200; });
  CHECK(error_of(model) == model.string() +
                               ": the T5 tokenizer and the T5 text encoder come from different models: "
                               "tokenizer_2/spiece.model has token ids up to 1199 but text_encoder_2/model.safetensors "
                               "has an embedding table of 1100 rows (shared.weight [1100, 32]): use the tokenizer_2/ "
                               "folder that came with this T5 text encoder");
}

TEST_CASE("a job setting guidance for a schnell model names the item and the transformer", "[model_files][consistency]") {
  const auto schnell = runtime::locate_model(
      test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-schnell").string());
  job::RenderItem plain = test::make_render_item(0, "a fox", 64, 64, 1);
  job::RenderItem asked = test::make_render_item(1, "a fox", 64, 64, 1);
  asked.guidance_set_by = "the item";
  asked.params.guidance = 4.5;
  CHECK_NOTHROW(runtime::check_guidance(schnell, schnell.variant, {&plain}));
  CHECK_THROWS_WITH(runtime::check_guidance(schnell, schnell.variant, {&plain, &asked}),
                    "job.json:2:1: guidance 4.5 (set by the item) but the model " + schnell.root +
                        " is FLUX.1-schnell (transformer/diffusion_pytorch_model.safetensors has no guidance "
                        "embedder), which has no guidance input: remove \"guidance\" from the job (or --guidance), "
                        "or render with a FLUX.1-dev model");
  const auto dev = runtime::locate_model(test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev").string());
  CHECK_NOTHROW(runtime::check_guidance(dev, dev.variant, {&asked}));
}
