#include "fluxbatch/core/error.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/weight_map.h"
#include "fluxbatch/nn/weights.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <algorithm>
#include <map>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
using namespace fluxbatch::models;

namespace {

const std::filesystem::path kModels = FLUXBATCH_MODELS_DIR;

nn::TensorMap read(const std::filesystem::path& path) { return nn::read_safetensors({path.string()}); }

// Same keys, and every tensor equal in dtype, shape and bits.
void check_same_tensors(const nn::TensorMap& actual, const nn::TensorMap& expected) {
  std::vector<std::string> missing, extra;
  for (const auto& [k, v] : expected) {
    if (!actual.count(k)) missing.push_back(k);
  }
  for (const auto& [k, v] : actual) {
    if (!expected.count(k)) extra.push_back(k);
  }
  INFO("missing " << missing.size() << (missing.empty() ? "" : " e.g. " + missing[0]) << ", extra " << extra.size()
                  << (extra.empty() ? "" : " e.g. " + extra[0]));
  REQUIRE(missing.empty());
  REQUIRE(extra.empty());
  for (const auto& [k, v] : expected) {
    INFO(k);
    const at::Tensor& a = actual.at(k);
    CHECK(a.scalar_type() == v.scalar_type());
    REQUIRE(a.sizes() == v.sizes());
    CHECK(at::equal(a, v));
  }
}

}  // namespace

TEST_CASE("BFL single file converts to exactly the diffusers transformer", "[model_files][weight_map]") {
  const auto bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const nn::TensorMap bfl = read(bfl_dir / "flux1-tiny-dev.safetensors");
  const nn::TensorMap diffusers = read(dev / "transformer/diffusion_pytorch_model.safetensors");

  const flux::FluxConfig detected = detect_flux_config(bfl);
  const flux::FluxConfig expected = flux::FluxConfig::from_json_file((dev / "transformer/config.json").string());
  CHECK(detected.patch_size == expected.patch_size);
  CHECK(detected.in_channels == expected.in_channels);
  CHECK(detected.out_channels == expected.out_channels);
  CHECK(detected.num_layers == expected.num_layers);
  CHECK(detected.num_single_layers == expected.num_single_layers);
  CHECK(detected.attention_head_dim == expected.attention_head_dim);
  CHECK(detected.num_attention_heads == expected.num_attention_heads);
  CHECK(detected.joint_attention_dim == expected.joint_attention_dim);
  CHECK(detected.pooled_projection_dim == expected.pooled_projection_dim);
  CHECK(detected.guidance_embeds == expected.guidance_embeds);
  CHECK(detected.axes_dims_rope == expected.axes_dims_rope);

  check_same_tensors(flux_bfl_to_diffusers(bfl, detected), diffusers);

  // Detection reads diffusers names too, and a ComfyUI prefix is tolerated by the conversion.
  const flux::FluxConfig from_diffusers = detect_flux_config(diffusers);
  CHECK(from_diffusers.num_layers == expected.num_layers);
  CHECK(from_diffusers.in_channels == expected.in_channels);
  CHECK(from_diffusers.guidance_embeds);
  nn::TensorMap prefixed;
  for (const auto& [k, v] : bfl) prefixed["model.diffusion_model." + k] = v;
  check_same_tensors(flux_bfl_to_diffusers(prefixed, detected), diffusers);
}

TEST_CASE("diffusers -> BFL: the tiny transformer becomes exactly the BFL file diffusers' converter maps back; "
          "and round trips", "[model_files][weight_map]") {
  const auto bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const nn::TensorMap bfl = read(bfl_dir / "flux1-tiny-dev.safetensors");
  const nn::TensorMap diffusers = read(dev / "transformer/diffusion_pytorch_model.safetensors");
  const flux::FluxConfig config = flux::FluxConfig::from_json_file((dev / "transformer/config.json").string());
  // make_tiny_models.py wrote the BFL file and checked it against diffusers' own BFL -> diffusers converter.
  const nn::TensorMap ours = flux_diffusers_to_bfl(diffusers, config);
  check_same_tensors(ours, bfl);
  check_same_tensors(flux_bfl_to_diffusers(ours, config), diffusers);

  // Tensors arrive one at a time, each once.
  std::map<std::string, int> seen;
  flux_diffusers_to_bfl(diffusers, config, [&](const std::string& name, const at::Tensor&) { ++seen[name]; });
  CHECK(seen.size() == bfl.size());
  CHECK(std::all_of(seen.begin(), seen.end(), [](const auto& kv) { return kv.second == 1; }));

  // A missing tensor and one no BFL name exists for are named.
  nn::TensorMap missing = diffusers;
  missing.erase("single_transformer_blocks.1.proj_mlp.bias");
  CHECK_THROWS_WITH(flux_diffusers_to_bfl(missing, config),
                    ContainsSubstring("missing 'single_transformer_blocks.1.proj_mlp.bias'"));
  nn::TensorMap extra = diffusers;
  extra["transformer_blocks.0.attn.to_extra.weight"] = at::ones({2, 2});
  CHECK_THROWS_WITH(flux_diffusers_to_bfl(extra, config),
                    ContainsSubstring("'transformer_blocks.0.attn.to_extra.weight' has no BFL name"));
}

TEST_CASE("schnell has no guidance embedder", "[model_files][weight_map]") {
  const auto schnell = test::require_generated(kModels / "tiny-flux-schnell");
  const nn::TensorMap w = read(schnell / "transformer/diffusion_pytorch_model.safetensors");
  CHECK_FALSE(detect_flux_config(w).guidance_embeds);
  std::vector<std::string> keys;
  for (const auto& [k, v] : w) keys.push_back(k);
  CHECK_FALSE(has_guidance_embedder(keys));
}

TEST_CASE("the conversion names the first missing BFL key", "[model_files][weight_map]") {
  const auto bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  nn::TensorMap bfl = read(bfl_dir / "flux1-tiny-dev.safetensors");
  const flux::FluxConfig config = detect_flux_config(bfl);
  bfl.erase("single_blocks.1.linear2.bias");
  CHECK_THROWS_WITH(flux_bfl_to_diffusers(bfl, config),
                    ContainsSubstring("missing tensor 'single_blocks.1.linear2.bias'"));
  flux::FluxConfig wrong = config;
  wrong.num_attention_heads = 3;
  CHECK_THROWS_WITH(flux_bfl_to_diffusers(read(bfl_dir / "flux1-tiny-dev.safetensors"), wrong),
                    ContainsSubstring("'double_blocks.0.img_attn.qkv.weight' has 96 rows, expected 144"));
  nn::TensorMap packed = read(bfl_dir / "flux1-tiny-dev.safetensors");
  packed["img_in.weight.absmax"] = at::ones({4});
  CHECK_THROWS_WITH(flux_bfl_to_diffusers(packed, config), ContainsSubstring("bnb-NF4"));
}

TEST_CASE("LDM ae.safetensors converts to exactly the diffusers VAE", "[model_files][weight_map]") {
  const auto bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const nn::TensorMap ldm = read(bfl_dir / "ae.safetensors");
  const nn::TensorMap diffusers = read(dev / "vae/diffusion_pytorch_model.safetensors");
  const nn::TensorMap converted = vae_ldm_to_diffusers(ldm);
  check_same_tensors(converted, diffusers);
  CHECK(converted.at("decoder.mid_block.attentions.0.to_q.weight").dim() == 2);

  const vae::VaeConfig expected = vae::VaeConfig::from_json_file((dev / "vae/config.json").string());
  for (const auto& detected : {detect_vae_config(ldm), detect_vae_config(diffusers)}) {
    CHECK(detected.latent_channels == expected.latent_channels);
    CHECK(detected.out_channels == expected.out_channels);
    CHECK(detected.block_out_channels == expected.block_out_channels);
    CHECK(detected.layers_per_block == expected.layers_per_block);
    CHECK(detected.mid_block_add_attention == expected.mid_block_add_attention);
    CHECK(detected.norm_num_groups == expected.norm_num_groups);  // a guess that holds for FLUX and the tiny VAE
  }
}

TEST_CASE("text encoder single files are transformers checkpoints", "[model_files][weight_map]") {
  const auto bfl_dir = test::require_generated(kModels / "tiny-flux-dev-bfl");
  const auto dev = test::require_generated(kModels / "tiny-flux-dev");
  const nn::TensorMap clip = clip_to_transformers(read(bfl_dir / "clip_l.safetensors"));
  const nn::TensorMap t5 = t5_to_transformers(read(bfl_dir / "t5xxl.safetensors"));
  check_same_tensors(clip, read(dev / "text_encoder/model.safetensors"));
  check_same_tensors(t5, read(dev / "text_encoder_2/model.safetensors"));

  const auto c = detect_clip_config(clip);
  const auto ce = clip::ClipTextConfig::from_json_file((dev / "text_encoder/config.json").string());
  CHECK(c.vocab_size == ce.vocab_size);
  CHECK(c.hidden_size == ce.hidden_size);
  CHECK(c.intermediate_size == ce.intermediate_size);
  CHECK(c.num_hidden_layers == ce.num_hidden_layers);
  CHECK(c.max_position_embeddings == ce.max_position_embeddings);
  CHECK(c.num_attention_heads == ce.num_attention_heads);  // a guess (64-wide heads when possible)

  const auto t = detect_t5_config(t5);
  const auto te = t5::T5Config::from_json_file((dev / "text_encoder_2/config.json").string());
  CHECK(t.vocab_size == te.vocab_size);
  CHECK(t.d_model == te.d_model);
  CHECK(t.d_kv == te.d_kv);
  CHECK(t.d_ff == te.d_ff);
  CHECK(t.num_layers == te.num_layers);
  CHECK(t.num_heads == te.num_heads);
  CHECK(t.relative_attention_num_buckets == te.relative_attention_num_buckets);
  CHECK(t.is_gated_act == te.is_gated_act);
  CHECK(t.dense_act_fn == te.dense_act_fn);
}

TEST_CASE("text encoder normalisation", "[weight_map]") {
  nn::TensorMap t5;
  t5["encoder.embed_tokens.weight"] = at::ones({4, 2});
  t5["encoder.final_layer_norm.weight"] = at::ones({2});
  t5["decoder.block.0.layer.0.SelfAttention.q.weight"] = at::ones({2, 2});
  t5["lm_head.weight"] = at::ones({4, 2});
  const auto t = t5_to_transformers(t5);
  CHECK(t.size() == 2);
  CHECK(t.count("shared.weight") == 1);
  CHECK(t.count("encoder.embed_tokens.weight") == 0);
  nn::TensorMap clip;
  clip["text_model.final_layer_norm.weight"] = at::ones({2});
  clip["text_projection.weight"] = at::ones({2, 2});
  clip["logit_scale"] = at::ones({});
  clip["text_model.embeddings.position_ids"] = at::zeros({1, 77}, at::kLong);
  CHECK(clip_to_transformers(clip).size() == 1);
}

TEST_CASE("classify_keys finds components, prefixes and dialects", "[model_files][weight_map]") {
  const std::vector<std::string> forge = {
      "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
      "model.diffusion_model.img_in.weight",
      "vae.decoder.conv_in.weight",
      "vae.decoder.up.0.block.0.conv1.weight",
      "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
      "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight",
      "text_encoders.t5xxl.transformer.shared.weight",
      "alphas_cumprod",
  };
  const auto found = classify_keys(forge);
  REQUIRE(found.size() == 4);
  CHECK(found[0].component == Component::kTransformer);
  CHECK(found[0].prefix == "model.diffusion_model.");
  CHECK(found[0].dialect == KeyDialect::kBfl);
  CHECK(found[0].count == 2);
  CHECK(found[1].component == Component::kTextEncoder);
  CHECK(found[1].prefix == "text_encoders.clip_l.transformer.");
  CHECK(found[2].component == Component::kTextEncoder2);
  CHECK(found[2].count == 2);
  CHECK(found[3].component == Component::kVae);
  CHECK(found[3].prefix == "vae.");
  CHECK(found[3].dialect == KeyDialect::kLdm);

  const auto diffusers_vae = classify_keys({"decoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"});
  REQUIRE(diffusers_vae.size() == 1);
  CHECK(diffusers_vae[0].dialect == KeyDialect::kDiffusers);
  const auto t5 = classify_keys({"shared.weight", "encoder.block.0.layer.0.layer_norm.weight"});
  REQUIRE(t5.size() == 1);
  CHECK(t5[0].component == Component::kTextEncoder2);
  const auto full_t5 = classify_keys({"shared.weight", "encoder.block.0.layer.0.layer_norm.weight",
                                      "decoder.block.0.layer.0.layer_norm.weight", "lm_head.weight"});
  REQUIRE(full_t5.size() == 1);
  CHECK(full_t5[0].component == Component::kTextEncoder2);
  CHECK(full_t5[0].count == 4);
  const auto comfy_vae = classify_keys({"first_stage_model.decoder.mid.block_1.conv1.weight"});
  REQUIRE(comfy_vae.size() == 1);
  CHECK(comfy_vae[0].component == Component::kVae);
  CHECK(classify_keys({"lora_unet_x.alpha"}).empty());

  nn::TensorMap prefixed;
  prefixed["vae.decoder.conv_in.weight"] = at::ones({1});
  prefixed["other"] = at::ones({1});
  const auto stripped = strip_prefix(prefixed, "vae.");
  REQUIRE(stripped.size() == 1);
  CHECK(stripped.count("decoder.conv_in.weight") == 1);
}

TEST_CASE("detection understands bnb-NF4 packed Linear weights and reports missing keys", "[weight_map]") {
  ShapeMap shapes = {
      {"img_in.weight", {64 * 3072 / 2, 1}},
      {"img_in.bias", {3072}},
      {"txt_in.weight", {4096 * 3072 / 2, 1}},
      {"vector_in.in_layer.weight", {768 * 3072 / 2, 1}},
      {"final_layer.linear.bias", {64}},
      {"double_blocks.0.img_attn.norm.query_norm.scale", {128}},
      {"double_blocks.18.img_attn.norm.query_norm.scale", {128}},
      {"single_blocks.37.linear2.bias", {3072}},
      {"guidance_in.in_layer.bias", {3072}},
  };
  const flux::FluxConfig c = detect_flux_config(shapes);
  CHECK(c.num_attention_heads == 24);
  CHECK(c.in_channels == 64);
  CHECK(c.joint_attention_dim == 4096);
  CHECK(c.pooled_projection_dim == 768);
  CHECK(c.num_layers == 19);
  CHECK(c.num_single_layers == 38);
  CHECK(c.guidance_embeds);
  CHECK(c.axes_dims_rope == std::vector<int64_t>{16, 56, 56});
  shapes.erase("txt_in.weight");
  CHECK_THROWS_WITH(detect_flux_config(shapes), ContainsSubstring("no tensor 'txt_in.weight'"));
  CHECK_THROWS_WITH(detect_vae_config(ShapeMap{}), ContainsSubstring("VAE") &&
                                                        ContainsSubstring("'decoder.conv_in.weight'"));
}

TEST_CASE("detection refuses block numbers and packed shapes no model has, before sizing anything by them",
          "[weight_map]") {
  // An ae.safetensors-like header whose up block says 999999999: the level list would take 8 GB.
  const ShapeMap vae = {{"decoder.conv_in.weight", {512, 16, 3, 3}},
                        {"decoder.conv_out.weight", {3, 128, 3, 3}},
                        {"decoder.up.0.block.0.conv1.weight", {128, 128, 3, 3}},
                        {"decoder.up.999999999.block.0.conv1.weight", {512, 512, 3, 3}}};
  CHECK_THROWS_WITH(detect_vae_config(vae), ContainsSubstring("tensor 'decoder.up.999999999.block.0.conv1.weight' "
                                                              "numbers block 999999999, more than any FLUX component"));
  ShapeMap t5 = {{"shared.weight", {1100, 32}},
                 {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 4}},
                 {"encoder.block.0.layer.0.SelfAttention.o.weight", {32, 32}},
                 {"encoder.block.0.layer.1.DenseReluDense.wo.weight", {32, 64}},
                 {"encoder.block.5000.layer.0.layer_norm.weight", {32}}};
  CHECK_THROWS_WITH(detect_t5_config(t5), ContainsSubstring("numbers block 5000"));
  // A "packed 4-bit" Linear of 2^62 bytes: rows * 2 would overflow.
  const ShapeMap flux = {{"img_in.weight", {int64_t{1} << 62, 1}},
                         {"img_in.bias", {3072}},
                         {"double_blocks.0.img_attn.norm.query_norm.scale", {128}}};
  CHECK_THROWS_WITH(detect_flux_config(flux), ContainsSubstring("tensor 'img_in.weight' has shape [4611686018427387904, "
                                                                "1], expected [3072, in] or a packed 4-bit weight"));
}
