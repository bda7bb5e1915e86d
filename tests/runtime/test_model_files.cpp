#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::EndsWith;
using namespace fluxbatch;
using namespace fluxbatch::runtime;
using models::Component;
using models::KeyDialect;
namespace fs = std::filesystem;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

void check_same_tensors(const nn::TensorMap& actual, const nn::TensorMap& expected) {
  REQUIRE(actual.size() == expected.size());
  for (const auto& [k, v] : expected) {
    INFO(k);
    REQUIRE(actual.count(k) == 1);
    CHECK(actual.at(k).scalar_type() == v.scalar_type());
    CHECK(at::equal(actual.at(k), v));
  }
}

// A folder of symlinks to `source`'s entries, except the names in `skip`.
void link_folder(const fs::path& source, const fs::path& target, const std::vector<std::string>& skip = {}) {
  fs::create_directories(target);
  for (const auto& entry : fs::directory_iterator(source)) {
    const std::string name = entry.path().filename().string();
    if (std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
    if (entry.is_directory()) {
      fs::create_directory_symlink(entry.path(), target / name);
    } else {
      fs::create_symlink(entry.path(), target / name);
    }
  }
}

nn::TensorMap diffusers_weights(const fs::path& dir, const std::string& component) {
  const std::string stem = component == "transformer" || component == "vae" ? "diffusion_pytorch_model" : "model";
  return nn::read_safetensors({(dir / component / (stem + ".safetensors")).string()});
}

}  // namespace

TEST_CASE("a diffusers folder", "[model_files]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const ModelFiles m = locate_model(dev.string());
  CHECK(m.layout == ModelLayout::kDiffusers);
  CHECK(m.variant == FluxVariant::kDev);
  CHECK(std::string(layout_name(m.layout)) == "diffusers");
  CHECK(std::string(variant_name(m.variant)) == "dev");
  REQUIRE(m.transformer.files.size() == 1);
  CHECK_THAT(m.transformer.files[0], EndsWith("transformer/diffusion_pytorch_model.safetensors"));
  CHECK_THAT(m.text_encoder.files[0], EndsWith("text_encoder/model.safetensors"));
  CHECK_THAT(m.text_encoder_2.files[0], EndsWith("text_encoder_2/model.safetensors"));
  CHECK_THAT(m.vae.files[0], EndsWith("vae/diffusion_pytorch_model.safetensors"));
  CHECK_THAT(m.transformer.config_path, EndsWith("transformer/config.json"));
  CHECK(m.transformer.dialect == KeyDialect::kDiffusers);
  CHECK(m.text_encoder_2.dialect == KeyDialect::kTransformers);
  CHECK(m.transformer.quantization.empty());
  CHECK_THAT(m.tokenizer_dir, EndsWith("tokenizer"));
  CHECK_THAT(m.tokenizer_2_dir, EndsWith("tokenizer_2"));
  CHECK_THAT(m.scheduler_config, EndsWith("scheduler/scheduler_config.json"));
  CHECK(&m.component(Component::kVae) == &m.vae);
  CHECK(transformer_config(m).num_attention_heads == 2);
  CHECK(vae_config(m).norm_num_groups == 8);
  CHECK(text_encoder_config(m).intermediate_size == 37);
  CHECK(text_encoder_2_config(m).d_kv == 8);
  check_same_tensors(read_component(m.transformer), diffusers_weights(dev, "transformer"));

  const auto schnell = test::require_generated(kModels / "tiny-flux-schnell");
  CHECK(locate_model(schnell.string()).variant == FluxVariant::kSchnell);
}

TEST_CASE("BFL / ComfyUI single files equal the diffusers folder", "[model_files]") {
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  for (const fs::path& given : {bfl, bfl / "flux1-tiny-dev.safetensors"}) {
    INFO(given.string());
    const ModelFiles m = locate_model(given.string());
    CHECK(m.layout == ModelLayout::kSingleFiles);
    CHECK(m.variant == FluxVariant::kDev);
    CHECK_THAT(m.transformer.files.at(0), EndsWith("flux1-tiny-dev.safetensors"));
    CHECK(m.transformer.dialect == KeyDialect::kBfl);
    CHECK_THAT(m.vae.files.at(0), EndsWith("ae.safetensors"));
    CHECK(m.vae.dialect == KeyDialect::kLdm);
    CHECK_THAT(m.text_encoder.files.at(0), EndsWith("clip_l.safetensors"));
    CHECK_THAT(m.text_encoder_2.files.at(0), EndsWith("t5xxl.safetensors"));
    CHECK(m.transformer.config_path.empty());
    CHECK(m.scheduler_config.empty());
    CHECK_THAT(m.tokenizer_dir, EndsWith("tokenizer"));
    CHECK_THAT(m.tokenizer_2_dir, EndsWith("tokenizer_2"));

    const auto expected = models::flux::FluxConfig::from_json_file((dev / "transformer/config.json").string());
    const auto detected = transformer_config(m);
    CHECK(detected.num_layers == expected.num_layers);
    CHECK(detected.num_single_layers == expected.num_single_layers);
    CHECK(detected.inner_dim() == expected.inner_dim());
    CHECK(detected.axes_dims_rope == expected.axes_dims_rope);
    CHECK(detected.guidance_embeds == expected.guidance_embeds);
    CHECK(vae_config(m).block_out_channels == std::vector<int64_t>{32, 32, 64, 64});
    CHECK(text_encoder_2_config(m).num_heads == 4);
    CHECK(text_encoder_config(m).num_hidden_layers == 2);
  }
  const ModelFiles m = locate_model(bfl.string());
  check_same_tensors(read_component(m.transformer), diffusers_weights(dev, "transformer"));
  check_same_tensors(read_component(m.vae), diffusers_weights(dev, "vae"));
  check_same_tensors(read_component(m.text_encoder), diffusers_weights(dev, "text_encoder"));
  check_same_tensors(read_component(m.text_encoder_2), diffusers_weights(dev, "text_encoder_2"));
  // Unrenamed: the file's own keys.
  CHECK(read_component(m.transformer, /*rename=*/false).count("double_blocks.0.img_attn.qkv.weight") == 1);
}

TEST_CASE("an all-in-one file with Forge prefixes", "[model_files]") {
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  test::TempDir dir;
  nn::TensorMap all;
  const std::pair<const char*, const char*> parts[] = {
      {"flux1-tiny-dev.safetensors", "model.diffusion_model."},
      {"ae.safetensors", "vae."},
      {"clip_l.safetensors", "text_encoders.clip_l.transformer."},
      {"t5xxl.safetensors", "text_encoders.t5xxl.transformer."}};
  for (const auto& [file, prefix] : parts) {
    for (const auto& [k, v] : nn::read_safetensors({(bfl / file).string()})) all[std::string(prefix) + k] = v;
  }
  const fs::path file = dir / "flux1-tiny-dev-all.safetensors";
  nn::write_safetensors(file.string(), all);
  // A stray file beside it must not confuse the layout.
  nn::write_safetensors((dir / "lora.safetensors").string(), {{"lora_unet_x.alpha", at::ones({1})}});

  CHECK_THROWS_WITH(locate_model(file.string()), ContainsSubstring("no CLIP tokenizer") &&
                                                     ContainsSubstring((dir / "tokenizer").string()));
  fs::create_directory_symlink(bfl / "tokenizer", dir / "tokenizer");
  fs::create_directory_symlink(bfl / "tokenizer_2", dir / "tokenizer_2");
  for (const fs::path& given : {file, dir.path()}) {
    const ModelFiles m = locate_model(given.string());
    CHECK(m.layout == ModelLayout::kAllInOne);
    CHECK(m.variant == FluxVariant::kDev);
    CHECK(m.transformer.prefix == "model.diffusion_model.");
    CHECK(m.vae.prefix == "vae.");
    CHECK(m.text_encoder.prefix == "text_encoders.clip_l.transformer.");
    CHECK(m.text_encoder_2.prefix == "text_encoders.t5xxl.transformer.");
    CHECK(m.text_encoder_2.files.at(0) == file.string());
    check_same_tensors(read_component(m.transformer), diffusers_weights(dev, "transformer"));
    check_same_tensors(read_component(m.vae), diffusers_weights(dev, "vae"));
    check_same_tensors(read_component(m.text_encoder_2), diffusers_weights(dev, "text_encoder_2"));
    CHECK(transformer_config(m).num_layers == 2);
  }
  // A separate ae.safetensors beside it: the all-in-one file still provides the VAE.
  fs::create_symlink(bfl / "ae.safetensors", dir / "ae.safetensors");
  CHECK(locate_model(file.string()).vae.files.at(0) == file.string());
}

TEST_CASE("a sharded diffusers component", "[model_files]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  test::TempDir dir;
  const fs::path root = dir / "sharded";
  link_folder(dev, root, {"transformer"});
  fs::create_directories(root / "transformer");
  fs::create_symlink(dev / "transformer/config.json", root / "transformer/config.json");
  const nn::TensorMap full = diffusers_weights(dev, "transformer");
  nn::TensorMap first, second;
  std::string weight_map;
  for (const auto& [k, v] : full) {
    const bool one = k < "single";
    (one ? first : second)[k] = v;
    weight_map += std::string(weight_map.empty() ? "" : ",") + "\"" + k + "\": \"diffusion_pytorch_model-0000" +
                  (one ? "1" : "2") + "-of-00002.safetensors\"";
  }
  nn::write_safetensors((root / "transformer/diffusion_pytorch_model-00001-of-00002.safetensors").string(), first);
  nn::write_safetensors((root / "transformer/diffusion_pytorch_model-00002-of-00002.safetensors").string(), second);
  test::write_file(root / "transformer/diffusion_pytorch_model.safetensors.index.json",
                   "{\"metadata\": {}, \"weight_map\": {" + weight_map + "}}");
  const ModelFiles m = locate_model(root.string());
  CHECK_THAT(m.transformer.files.at(0), EndsWith("diffusion_pytorch_model.safetensors.index.json"));
  CHECK(weight_files(m.transformer).size() == 2);
  CHECK(m.variant == FluxVariant::kDev);
  CHECK(component_shapes(m.transformer).size() == full.size());
  check_same_tensors(read_component(m.transformer), full);
}

TEST_CASE("missing or ambiguous components say what was expected and where", "[model_files]") {
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const auto bfl = test::require_generated(kModels / "tiny-flux-dev-bfl");
  test::TempDir dir;

  CHECK_THROWS_WITH(locate_model((dir / "nothing").string()), ContainsSubstring("no such file or folder"));
  CHECK_THROWS_WITH(locate_model(dir.path().string()), ContainsSubstring("neither a diffusers folder"));

  const fs::path no_vae = dir / "no_vae";
  link_folder(dev, no_vae, {"vae"});
  CHECK_THROWS_WITH(locate_model(no_vae.string()),
                    ContainsSubstring("no VAE: expected " + (no_vae / "vae").string() +
                                      "/diffusion_pytorch_model.safetensors"));
  const fs::path no_tok = dir / "no_tok";
  link_folder(dev, no_tok, {"tokenizer_2"});
  CHECK_THROWS_WITH(locate_model(no_tok.string()),
                    ContainsSubstring("no T5 tokenizer: expected " + (no_tok / "tokenizer_2").string()));
  LocateOptions lenient;
  lenient.require_tokenizers = false;
  CHECK(locate_model(no_tok.string(), lenient).tokenizer_2_dir.empty());
  const fs::path no_sched = dir / "no_sched";
  link_folder(dev, no_sched, {"scheduler"});
  CHECK_THROWS_WITH(locate_model(no_sched.string()), ContainsSubstring("no scheduler"));
  const fs::path other = dir / "other";
  link_folder(dev, other, {"model_index.json"});
  test::write_file(other / "model_index.json", R"({"_class_name": "StableDiffusionPipeline"})");
  CHECK_THROWS_WITH(locate_model(other.string()), ContainsSubstring("not a FluxPipeline"));

  const fs::path single = dir / "single";
  link_folder(bfl, single, {"ae.safetensors"});
  CHECK_THROWS_WITH(locate_model(single.string()),
                    ContainsSubstring("no VAE in " + single.string() + ": expected ae.safetensors"));
  fs::create_symlink(bfl / "ae.safetensors", single / "ae.safetensors");
  CHECK(locate_model(single.string()).vae.dialect == KeyDialect::kLdm);
  fs::create_symlink(bfl / "flux1-tiny-dev.safetensors", single / "flux1-tiny-dev-copy.safetensors");
  CHECK_THROWS_WITH(locate_model(single.string()),
                    ContainsSubstring("several files could be the FLUX transformer") &&
                        ContainsSubstring("flux1-tiny-dev-copy.safetensors") &&
                        ContainsSubstring("pass the transformer file itself"));
  CHECK_THAT(locate_model((single / "flux1-tiny-dev-copy.safetensors").string()).transformer.files.at(0),
             EndsWith("flux1-tiny-dev-copy.safetensors"));

  const fs::path only_vae = dir / "only_vae";
  fs::create_directories(only_vae);
  fs::create_symlink(bfl / "ae.safetensors", only_vae / "ae.safetensors");
  CHECK_THROWS_WITH(locate_model((only_vae / "ae.safetensors").string()),
                    ContainsSubstring("this file holds no FLUX transformer"));
  test::write_file(dir / "model.ckpt", "x");
  CHECK_THROWS_WITH(locate_model((dir / "model.ckpt").string()), ContainsSubstring("not a .safetensors file"));
}
