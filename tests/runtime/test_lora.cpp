// LoRAs (issue 17) on the tiny FLUX.1-dev models, fp32 on the CPU, against the files and images that
// scripts/make_lora_fixtures.py made with diffusers + peft (load_lora_weights, set_adapters).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fluxbatch/job/job_error.h"
#include "fluxbatch/models/lora/lora_file.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"
#include "fluxbatch/runtime/lora/lora_report.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace fluxbatch;
using Catch::Matchers::ContainsSubstring;
using models::lora::LoraComponent;
using models::lora::LoraFormat;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

fs::path lora_path(const std::string& name) { return test::require_generated(kModels / "loras" / name); }

const models::lora::LoraTarget* find_target(const models::lora::LoraFile& f, const std::string& module) {
  for (const auto& t : f.targets) {
    if (t.module == module) return &t;
  }
  return nullptr;
}

job::LoraRef ref(const std::string& name, double scale, bool strict = true) {
  job::LoraRef r;
  r.path = lora_path(name).string();
  r.scale = scale;
  r.strict = strict;
  r.location = "test.json:1:1";
  r.field = "items[0].loras[0] (" + name + ")";
  return r;
}

// A job of one item per LoRA list (the catalog reads what the items name).
job::JobSpec job_with(const std::vector<std::vector<job::LoraRef>>& per_item) {
  job::JobSpec spec;
  for (size_t i = 0; i < per_item.size(); ++i) {
    job::RenderItem item;
    item.index = static_cast<int64_t>(i);
    item.prompt = "p";
    item.params.loras = per_item[i];
    spec.items.push_back(item);
  }
  return spec;
}

// scripts/make_lora_fixtures.py CASE.
const std::vector<std::string> kPrompts = {"a photo of a cat", "A painting of a red house at night, oil on canvas"};

// [n, 3, H, W] VAE output of the case's images, each image with its own LoRAs (item i of `spec`, which
// holds one item per image), in one batch.
at::Tensor render(runtime::FluxPipeline& pipeline, const std::shared_ptr<runtime::LoraCatalog>& catalog,
                  const job::JobSpec& spec, const std::vector<std::string>& prompts, const std::vector<uint64_t>& seeds) {
  runtime::DenoiseRequest request;
  request.width = 64;
  request.height = 64;
  request.steps = 4;
  request.seeds = seeds;
  std::vector<at::Tensor> states, pooled;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& loras = spec.items.at(i).params.loras;
    request.guidance.push_back(3.5);
    request.loras.push_back(catalog->set_for(loras, LoraComponent::kTransformer));
    const auto e = pipeline.encode_prompts({prompts[i]}, 512, catalog->set_for(loras, LoraComponent::kTextEncoder));
    states.push_back(e.prompt_embeds);
    pooled.push_back(e.pooled);
  }
  const runtime::PromptEmbeddings embeddings{at::cat(states, 0), at::cat(pooled, 0)};
  return pipeline.decode(pipeline.denoise(embeddings, request), 64, 64);
}

// Largest difference in 8-bit pixel units after the pipeline's postprocess mapping (x / 2 + 0.5, clamped).
double pixel_error(const at::Tensor& a, const at::Tensor& b) {
  const auto unit = [](const at::Tensor& x) { return (x.to(at::kDouble) / 2 + 0.5).clamp(0, 1); };
  return (unit(a) - unit(b)).abs().max().item<double>() * 255.0;
}

}  // namespace

TEST_CASE("LoRA files of each dialect map onto the model's Linears, fused layers split by rows", "[lora]") {
  const fs::path model = test::require_generated(kModels / "tiny-flux-dev");
  const runtime::ModelFiles files = runtime::locate_model(model.string());
  const auto transformer = runtime::transformer_linear_shapes(files);
  const auto clip = runtime::text_encoder_linear_shapes(files);
  CHECK(transformer.count("single_transformer_blocks.1.proj_mlp"));
  CHECK(clip.count("text_model.encoder.layers.1.mlp.fc2"));
  const std::map<LoraComponent, const models::lora::LinearShapes*> shapes = {
      {LoraComponent::kTransformer, &transformer}, {LoraComponent::kTextEncoder, &clip}};

  const auto peft = models::lora::read_lora_file(lora_path("peft_a.safetensors").string());
  CHECK(peft.format == LoraFormat::kPeft);
  CHECK(peft.unknown_keys.empty());
  CHECK(peft.targets.size() == transformer.size() + 12);  // every transformer Linear + 2 CLIP layers x 6
  CHECK(peft.ranks() == std::vector<int64_t>{4});
  CHECK(find_target(peft, "transformer_blocks.0.attn.to_q")->alpha_scale == 0.5);  // alpha 2 / rank 4
  CHECK(peft.has(LoraComponent::kTextEncoder));
  const auto fit = models::lora::check_fit(peft, shapes);
  CHECK(fit.missing_modules.empty());
  CHECK(fit.shape_errors.empty());

  const auto kohya = models::lora::read_lora_file(lora_path("kohya.safetensors").string());
  CHECK(kohya.format == LoraFormat::kKohya);
  CHECK(kohya.unknown_keys.empty());
  CHECK(models::lora::check_fit(kohya, shapes).missing_modules.empty());
  CHECK(models::lora::check_fit(kohya, shapes).shape_errors.empty());
  // linear1 = q | k | v | MLP: the shared down, each its rows of up; alpha 2 / rank 4 folded into down.
  const nn::TensorMap raw = nn::read_safetensors({lora_path("kohya.safetensors").string()});
  const at::Tensor up = raw.at("lora_unet_single_blocks_1_linear1.lora_up.weight").to(at::kFloat);
  const at::Tensor down = raw.at("lora_unet_single_blocks_1_linear1.lora_down.weight").to(at::kFloat);
  const auto* k = find_target(kohya, "single_transformer_blocks.1.attn.to_k");
  const auto* mlp = find_target(kohya, "single_transformer_blocks.1.proj_mlp");
  REQUIRE(k != nullptr);
  REQUIRE(mlp != nullptr);
  CHECK(at::equal(k->up, up.narrow(0, 32, 32)));
  CHECK(at::equal(mlp->up, up.narrow(0, 96, 128)));
  CHECK(at::equal(k->down, down * 0.5));
  CHECK(k->alpha_scale == 1.0);
  // BFL's final modulation is (shift, scale); ours (scale, shift).
  const at::Tensor final_up = raw.at("lora_unet_final_layer_adaLN_modulation_1.lora_up.weight").to(at::kFloat);
  CHECK(at::equal(find_target(kohya, "norm_out.linear")->up.narrow(0, 0, 32), final_up.narrow(0, 32, 32)));
  CHECK(find_target(kohya, "text_model.encoder.layers.0.self_attn.q_proj") != nullptr);

  const auto xlabs = models::lora::read_lora_file(lora_path("xlabs.safetensors").string());
  CHECK(xlabs.format == LoraFormat::kXLabs);
  CHECK(xlabs.unknown_keys.empty());
  CHECK(find_target(xlabs, "transformer_blocks.1.attn.add_v_proj") != nullptr);
  CHECK(models::lora::check_fit(xlabs, shapes).shape_errors.empty());

  // A LoRA for a larger model: a block the tiny model lacks, and a DoRA key no dialect knows.
  const auto foreign = models::lora::read_lora_file(lora_path("foreign.safetensors").string());
  REQUIRE(foreign.unknown_keys.size() == 1);
  CHECK_THAT(foreign.unknown_keys[0], ContainsSubstring("lora_magnitude_vector"));
  const auto foreign_fit = models::lora::check_fit(foreign, shapes);
  REQUIRE(foreign_fit.missing_modules.size() == 1);
  CHECK_THAT(foreign_fit.missing_modules[0], ContainsSubstring("transformer_blocks.7.attn.to_q"));
}

TEST_CASE("LoraCatalog refuses what does not fit before any weights load, naming where it was given", "[lora]") {
  const runtime::ModelFiles files = runtime::locate_model(test::require_generated(kModels / "tiny-flux-dev").string());
  test::TempDir dir;
  SECTION("unknown keys and layers the model lacks; strict false ignores them") {
    job::JobSpec spec = job_with({{ref("foreign.safetensors", 1.0)}});
    try {
      runtime::LoraCatalog::load(spec, files);
      FAIL("no error");
    } catch (const job::JobError& e) {
      const std::string what = e.what();
      CHECK_THAT(what, ContainsSubstring("test.json:1:1 items[0].loras[0] (foreign.safetensors): "));
      CHECK_THAT(what, ContainsSubstring("lora_magnitude_vector"));
      CHECK_THAT(what, ContainsSubstring("transformer_blocks.7.attn.to_q"));
      CHECK_THAT(what, ContainsSubstring("\"strict\": false"));
    }
    job::JobSpec lenient = job_with({{ref("foreign.safetensors", 1.0, /*strict=*/false)}});
    const auto catalog = runtime::LoraCatalog::load(lenient, files);
    REQUIRE(catalog->adapters().size() == 1);
    CHECK(catalog->adapters()[0].file.targets.size() == 1);  // transformer_blocks.0.attn.to_q only
    CHECK(lenient.items[0].params.loras[0].sha256.size() == 64);
  }
  SECTION("a missing file, a safetensors file without LoRA weights, shapes that do not fit") {
    job::LoraRef missing = ref("peft_a.safetensors", 1.0);
    missing.path = (dir / "nope.safetensors").string();
    job::LoraRef not_lora = ref("peft_a.safetensors", 1.0);
    not_lora.path = (kModels / "tiny-flux-dev" / "vae" / "diffusion_pytorch_model.safetensors").string();
    nn::write_safetensors((dir / "wide.safetensors").string(),
                          {{"transformer.proj_out.lora_A.weight", at::zeros({4, 48})},
                           {"transformer.proj_out.lora_B.weight", at::zeros({64, 4})}});
    job::LoraRef wide = ref("peft_a.safetensors", 1.0);
    wide.path = (dir / "wide.safetensors").string();
    job::JobSpec spec = job_with({{missing}, {not_lora}, {wide}});
    try {
      runtime::LoraCatalog::load(spec, files);
      FAIL("no error");
    } catch (const job::JobError& e) {
      REQUIRE(e.diagnostics().size() == 3);
      const std::string what = e.what();
      CHECK_THAT(what, ContainsSubstring("nope.safetensors: no such file"));
      CHECK_THAT(what, ContainsSubstring("no LoRA weights found"));
      CHECK_THAT(what, ContainsSubstring("proj_out: the LoRA maps 48 -> 64 features (rank 4"));
    }
  }
}

TEST_CASE("images with LoRAs are within 1/255 of diffusers' load_lora_weights on the same files", "[lora]") {
  // (case, base model, LoRAs) as scripts/make_lora_fixtures.py CASES.
  struct Case {
    const char* name;
    const char* model;
    std::vector<std::pair<const char*, double>> loras;
  };
  const Case c = GENERATE(Case{"peft_a", "tiny-flux-dev", {{"peft_a.safetensors", 0.8}}},
                          Case{"kohya", "tiny-flux-dev", {{"kohya.safetensors", 1.0}}},
                          Case{"xlabs", "tiny-flux-dev", {{"xlabs.safetensors", 1.0}}},
                          Case{"two", "tiny-flux-dev", {{"peft_a.safetensors", 0.7}, {"peft_b.safetensors", -1.3}}},
                          Case{"nf4_peft_a", "tiny-flux-dev-nf4", {{"peft_a.safetensors", 0.8}}});
  INFO(c.name);
  const nn::TensorMap reference = nn::read_safetensors({lora_path("reference.safetensors").string()});
  const fs::path model = test::require_generated(kModels / c.model);
  std::vector<job::LoraRef> loras;
  for (const auto& [file, scale] : c.loras) loras.push_back(ref(file, scale));
  job::JobSpec spec = job_with({loras, loras});
  const runtime::ModelFiles files = runtime::locate_model(model.string());
  const auto catalog = runtime::LoraCatalog::load(spec, files);
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.loras = catalog;
  runtime::FluxPipeline pipeline(model.string(), options);
  const at::Tensor image = render(pipeline, catalog, spec, kPrompts, {0, 1});
  const at::Tensor want = reference.at(c.name);
  REQUIRE(image.sizes() == want.sizes());
  const double err = pixel_error(image, want);
  INFO("largest difference " << err << "/255");
  CHECK(err <= 1.0);
  if (std::string(c.model) == "tiny-flux-dev") {
    // The LoRA changed the image far more than the tolerance (and than the error measured, ~1e-3), so the
    // comparison means something. XLabs' attention-only LoRA moves it least (about 6.5/255).
    CHECK(pixel_error(want, reference.at("none")) > 5.0);
  }
}

TEST_CASE("a batch with different LoRAs per image gives each image its batch-1 render", "[lora]") {
  const std::string folder = GENERATE("tiny-flux-dev", "tiny-flux-dev-nf4");
  INFO(folder);
  const fs::path model = test::require_generated(kModels / folder);
  const std::vector<std::vector<job::LoraRef>> per_image = {
      {ref("peft_a.safetensors", 0.8)},
      {ref("kohya.safetensors", 1.0), ref("peft_b.safetensors", 0.5)},
      {},
      {ref("xlabs.safetensors", -0.6)}};
  job::JobSpec spec = job_with(per_image);
  const auto catalog = runtime::LoraCatalog::load(spec, runtime::locate_model(model.string()));
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.loras = catalog;
  runtime::FluxPipeline pipeline(model.string(), options);
  const std::vector<std::string> prompts = {kPrompts[0], kPrompts[1], kPrompts[0], kPrompts[1]};
  const at::Tensor batch = render(pipeline, catalog, spec, prompts, {5, 6, 7, 8});
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("image " << i);
    job::JobSpec one;
    one.items = {spec.items[i]};
    const at::Tensor alone = render(pipeline, catalog, one, {prompts[i]}, {5 + i});
    CHECK(at::equal(alone[0], batch[static_cast<int64_t>(i)]));
  }
}

TEST_CASE("inspect on a LoRA file tells its format, rank, targets and size", "[lora]") {
  const std::string path = lora_path("kohya.safetensors").string();
  CHECK(runtime::looks_like_lora(path));
  CHECK_FALSE(runtime::looks_like_lora((kModels / "tiny-flux-dev" / "vae" / "diffusion_pytorch_model.safetensors").string()));
  const std::string text = runtime::inspect_lora(path, false);
  CHECK_THAT(text, ContainsSubstring("LoRA (Kohya/ComfyUI)"));
  CHECK_THAT(text, ContainsSubstring("rank: 4"));
  CHECK_THAT(text, ContainsSubstring("single_transformer_blocks.*.proj_mlp  (x2)"));
  CHECK_THAT(text, ContainsSubstring("text_encoder:"));
  CHECK_THAT(text, ContainsSubstring("sha256: "));
  const std::string json = runtime::inspect_lora(lora_path("xlabs.safetensors").string(), true);
  CHECK_THAT(json, ContainsSubstring("\"format\": \"XLabs\""));
}

TEST_CASE("merged LoRAs: close to the side paths, and taken out exactly", "[lora]") {
  const fs::path model = test::require_generated(kModels / "tiny-flux-dev");
  job::JobSpec spec = job_with({{ref("peft_a.safetensors", 0.8)}, {ref("peft_a.safetensors", 0.8)}});
  const auto catalog = runtime::LoraCatalog::load(spec, runtime::locate_model(model.string()));
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.loras = catalog;
  runtime::FluxPipeline side(model.string(), options);
  const at::Tensor by_side_paths = render(side, catalog, spec, kPrompts, {0, 1});
  options.merge_loras = true;
  runtime::FluxPipeline merged(model.string(), options);
  const job::JobSpec plain = job_with({{}, {}});
  const at::Tensor before = render(merged, catalog, plain, kPrompts, {0, 1});
  const at::Tensor by_merge = render(merged, catalog, spec, kPrompts, {0, 1});
  // (W + s B A) x against W x + s B (A x): the same sum, grouped otherwise.
  CHECK(pixel_error(by_merge, by_side_paths) < 0.05);
  CHECK_FALSE(at::equal(by_merge, by_side_paths));  // it did merge (side paths would be bit-identical)
  CHECK(at::equal(render(merged, catalog, plain, kPrompts, {0, 1}), before));  // unmerged bit for bit
  const nn::TensorMap reference = nn::read_safetensors({lora_path("reference.safetensors").string()});
  CHECK(pixel_error(by_merge, reference.at("peft_a")) <= 1.0);
}

TEST_CASE("the runner mixes LoRA sets in a batch, and groups them when LoRAs are merged", "[lora]") {
  test::TempDir dir;
  job::JobSpec spec = job_with({{ref("peft_a.safetensors", 0.8)}, {}, {ref("peft_a.safetensors", 0.8)},
                                {ref("peft_a.safetensors", 0.5)}, {}});
  for (size_t i = 0; i < spec.items.size(); ++i) spec.items[i].file = std::to_string(i) + ".png";
  const auto mixed = runtime::plan_job(spec, dir.path().string(), std::nullopt, false, 8);
  REQUIRE(mixed.batches.size() == 1);
  CHECK(mixed.batches[0].size() == 5);
  const auto grouped = runtime::plan_job(spec, dir.path().string(), std::nullopt, false, 8, {}, /*group_by_loras=*/true);
  REQUIRE(grouped.batches.size() == 3);
  CHECK(grouped.batches[0].size() == 2);  // items 0 and 2
  CHECK(grouped.batches[1].size() == 2);  // 1 and 4: no LoRA
  CHECK(grouped.batches[2].size() == 1);  // 3: another scale
  CHECK(grouped.batches[1][1]->index == 4);
}

TEST_CASE("LoRAs on --compute fp8: side paths on the fp8 layers, each image as in batch 1", "[lora][fp8]") {
  // CPU: the fp32 reference of the fp8 arithmetic. The blocks' Linears hold e4m3 weights; q/k/v read the
  // modulated LayerNorm's fp8 rows (their side paths read those rows dequantized), the rest dense inputs.
  const fs::path model = test::require_generated(kModels / "tiny-flux-dev");
  const std::vector<std::vector<job::LoraRef>> per_image = {
      {ref("peft_a.safetensors", 0.8)}, {}, {ref("xlabs.safetensors", -0.6)}};
  job::JobSpec spec = job_with(per_image);
  const auto catalog = runtime::LoraCatalog::load(spec, runtime::locate_model(model.string()));
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.loras = catalog;
  options.compute_fp8 = true;
  runtime::FluxPipeline pipeline(model.string(), options);
  const std::vector<std::string> prompts = {kPrompts[0], kPrompts[1], kPrompts[0]};
  const at::Tensor batch = render(pipeline, catalog, spec, prompts, {0, 1, 2});
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("image " << i);
    job::JobSpec one;
    one.items = {spec.items[i]};
    CHECK(at::equal(render(pipeline, catalog, one, {prompts[i]}, {i}), batch.narrow(0, static_cast<int64_t>(i), 1)));
  }
  // The LoRA really applies on fp8 layers: against diffusers' fp32 images, fp8 with the LoRA is as close to
  // the LoRA's image as fp8 without it is to the plain one (fp8's own error), far from the plain one.
  const nn::TensorMap reference = nn::read_safetensors({lora_path("reference.safetensors").string()});
  job::JobSpec lora = job_with({{ref("peft_a.safetensors", 0.8)}, {ref("peft_a.safetensors", 0.8)}});
  const at::Tensor with = render(pipeline, catalog, lora, kPrompts, {0, 1});
  const at::Tensor without = render(pipeline, catalog, job_with({{}, {}}), kPrompts, {0, 1});
  const double fp8_error = pixel_error(without, reference.at("none"));
  const double with_error = pixel_error(with, reference.at("peft_a"));
  INFO("fp8 without LoRA vs diffusers: " << fp8_error << "/255; with: " << with_error << "/255");
  CHECK(with_error <= fp8_error + 2.0);
  CHECK(with_error < 0.5 * pixel_error(reference.at("peft_a"), reference.at("none")));
  // --lora-merge cannot merge into fp8 weights: it keeps side paths (the same pixels).
  options.merge_loras = true;
  runtime::FluxPipeline merged(model.string(), options);
  CHECK(at::equal(render(merged, catalog, lora, kPrompts, {0, 1}), with));
}
