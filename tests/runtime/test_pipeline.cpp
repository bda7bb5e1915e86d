// FluxPipeline on the tiny random-weight models vs diffusers' FluxPipeline runs recorded in
// tests/golden/cases.json (fp32, CPU): embeddings, every step's latents, VAE output and pixels.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../sampling/golden_cases.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/sampling/postprocess.h"

namespace fs = std::filesystem;
using fluxbatch::runtime::DenoiseRequest;
using fluxbatch::runtime::FluxPipeline;
using fluxbatch::runtime::FluxVariant;
using fluxbatch::runtime::PipelineOptions;
using fluxbatch::test::GoldenCase;

namespace {

const fs::path kGolden = FLUXBATCH_GOLDEN_DIR;
const fs::path kModels = FLUXBATCH_MODELS_DIR;

// One fp32 CPU pipeline per model folder, shared by the tests (loading is the slow part).
FluxPipeline& pipeline_for(const std::string& model) {
  static std::map<std::string, std::unique_ptr<FluxPipeline>> pipelines;
  auto& slot = pipelines[model];
  if (!slot) {
    PipelineOptions options;
    options.dtype = at::kFloat;
    slot = std::make_unique<FluxPipeline>(fluxbatch::test::require_generated(kModels / model).string(), options);
  }
  return *slot;
}

DenoiseRequest request_for(const GoldenCase& c) {
  DenoiseRequest r;
  r.width = c.width;
  r.height = c.height;
  r.steps = c.steps;
  r.seeds = c.seeds;
  r.guidance.assign(c.seeds.size(), c.guidance);
  return r;
}

// Largest |a - b| relative to the reference's largest magnitude: fp32 rounding through a few
// layers stays near 1e-6.
double relative_error(const at::Tensor& got, const at::Tensor& want) {
  REQUIRE(got.sizes() == want.sizes());
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  return (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / scale;
}

struct PixelDiff {
  double within_one = 0.0;  // fraction of values off by at most 1
  int max = 0;
};
PixelDiff pixel_diff(const at::Tensor& got, const at::Tensor& want) {
  REQUIRE(got.sizes() == want.sizes());
  const at::Tensor diff = (got.to(at::kInt) - want.to(at::kInt)).abs();
  return {diff.le(1).to(at::kDouble).mean().item<double>(), diff.max().item<int>()};
}

}  // namespace

TEST_CASE("pipeline variants and descriptions", "[pipeline]") {
  CHECK(pipeline_for("tiny-flux-dev").variant() == FluxVariant::kDev);
  CHECK(pipeline_for("tiny-flux-schnell").variant() == FluxVariant::kSchnell);
  CHECK_THAT(pipeline_for("tiny-flux-dev").description(), Catch::Matchers::StartsWith("FLUX.1-dev"));
  CHECK(pipeline_for("tiny-flux-dev").scheduler_config().use_dynamic_shifting);
  CHECK_FALSE(pipeline_for("tiny-flux-schnell").scheduler_config().use_dynamic_shifting);
  const auto dev = fluxbatch::runtime::variant_defaults(FluxVariant::kDev);
  CHECK((dev.steps == 28 && dev.guidance == 3.5 && dev.max_sequence_length == 512));
  const auto schnell = fluxbatch::runtime::variant_defaults(FluxVariant::kSchnell);
  CHECK((schnell.steps == 4 && schnell.max_sequence_length == 256));
}

TEST_CASE("fp8 attention reaches the transformer and the description, with fp8 compute only", "[pipeline][fp8]") {
  using Catch::Matchers::EndsWith;
  const std::string model = fluxbatch::test::require_generated(kModels / "tiny-flux-dev").string();
  PipelineOptions options;
  options.dtype = at::kFloat;
  options.compute_fp8 = true;  // the CPU runs the references of the fp8 arithmetic
  options.attention_fp8 = true;
  const FluxPipeline fp8(model, options);
  // The description is what the manifest and the PNGs record and resume compares.
  CHECK_THAT(fp8.description(), EndsWith(", fp8 compute, fp8 attention"));
  CHECK_THAT(fluxbatch::runtime::describe_model(fp8.files(), true, false), EndsWith("), fp8 compute"));
  CHECK_THAT(fluxbatch::runtime::describe_model(fp8.files(), false, false), EndsWith(")"));
  using fluxbatch::models::flux::FluxTransformer2DModelImpl;
  const FluxTransformer2DModelImpl* transformer = nullptr;
  for (const auto& [name, module] : fp8.components()) {
    if (name == "transformer") transformer = dynamic_cast<const FluxTransformer2DModelImpl*>(module);
  }
  REQUIRE(transformer != nullptr);
  CHECK(transformer->fp8_attention());

  options.compute_fp8 = false;
  CHECK_THROWS_AS(FluxPipeline(model, options), fluxbatch::InputError);
}

TEST_CASE("pipeline matches diffusers on every golden case (fp32, CPU)", "[pipeline]") {
  for (const GoldenCase& c : fluxbatch::test::read_golden_cases(kGolden)) {
    INFO("case " << c.index << " (" << c.file << ")");
    const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file);
    FluxPipeline& pipeline = pipeline_for(c.model);

    const auto embeddings = pipeline.encode_prompts(c.prompts, c.max_sequence_length);
    // Bit-identical on the machine that made the goldens; other CPUs (more threads, other SIMD paths)
    // round fp32 reductions differently: 1.3e-5 was seen on the GPU machine's 16-core CPU.
    CHECK(relative_error(embeddings.prompt_embeds, golden.at("prompt_embeds")) < 1e-4);
    CHECK(relative_error(embeddings.pooled, golden.at("pooled_prompt_embeds")) < 1e-4);

    std::vector<at::Tensor> steps;
    const at::Tensor latents = pipeline.denoise(embeddings, request_for(c),
                                                [&](int, const at::Tensor& x) { steps.push_back(x.clone()); });
    REQUIRE(static_cast<int>(steps.size()) == c.steps);
    for (int i = 0; i < c.steps; ++i) {
      INFO("latents after step " << i);
      CHECK(relative_error(steps[static_cast<size_t>(i)], golden.at("latents_" + std::to_string(i))) < 1e-5);
    }

    const at::Tensor image = pipeline.decode(latents, c.width, c.height);
    CHECK(relative_error(image, golden.at("image_float")) < 1e-4);
    const auto diff = pixel_diff(fluxbatch::sampling::postprocess_uint8(image), golden.at("image_uint8"));
    CHECK(diff.within_one >= 0.999);
    CHECK(diff.max <= 2);
  }
}

TEST_CASE("generate() runs all stages and returns the golden pixels", "[pipeline]") {
  const GoldenCase c = fluxbatch::test::read_golden_cases(kGolden).front();
  const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file);
  const at::Tensor pixels = pipeline_for(c.model).generate(c.prompts, c.max_sequence_length, request_for(c));
  CHECK(pixels.scalar_type() == at::kByte);
  const auto diff = pixel_diff(pixels, golden.at("image_uint8"));
  CHECK(diff.within_one >= 0.999);
  CHECK(diff.max <= 2);
}

TEST_CASE("the BFL single-file copy renders the same images as the diffusers folder", "[pipeline]") {
  FluxPipeline& bfl = pipeline_for("tiny-flux-dev-bfl");
  CHECK(bfl.variant() == FluxVariant::kDev);
  CHECK(bfl.scheduler_config().use_dynamic_shifting);  // built-in dev scheduler: no scheduler/ folder
  CHECK(bfl.scheduler_config().shift == 3.0);
  for (const GoldenCase& c : fluxbatch::test::read_golden_cases(kGolden)) {
    if (c.model != "tiny-flux-dev") continue;
    INFO("case " << c.index);
    const at::Tensor folder = pipeline_for(c.model).generate(c.prompts, c.max_sequence_length, request_for(c));
    const at::Tensor single = bfl.generate(c.prompts, c.max_sequence_length, request_for(c));
    const auto diff = pixel_diff(single, folder);
    CHECK(diff.max <= 1);
    CHECK(diff.within_one == 1.0);
  }
}

TEST_CASE("bf16 on the CPU: bf16 all the way, embeddings within bf16 rounding of fp32", "[pipeline]") {
  // The noise is drawn in bf16 (as diffusers does), so bf16 images are not comparable to the fp32
  // goldens; checked by hand against diffusers' bf16 CPU run of case 0: embeddings and every step's
  // latents bit-identical, pixels equal to diffusers' per-image VAE decode.
  const GoldenCase c = fluxbatch::test::read_golden_cases(kGolden).front();
  const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file);
  PipelineOptions options;
  options.dtype = at::kBFloat16;
  FluxPipeline bf16((kModels / c.model).string(), options);
  const auto embeddings = bf16.encode_prompts(c.prompts, c.max_sequence_length);
  CHECK(embeddings.prompt_embeds.scalar_type() == at::kBFloat16);
  CHECK(relative_error(embeddings.prompt_embeds, golden.at("prompt_embeds")) < 3e-2);
  CHECK(relative_error(embeddings.pooled, golden.at("pooled_prompt_embeds")) < 3e-2);
  const at::Tensor latents = bf16.denoise(embeddings, request_for(c));
  CHECK(latents.scalar_type() == at::kBFloat16);
  const at::Tensor image = bf16.decode(latents, c.width, c.height);
  CHECK(image.scalar_type() == at::kBFloat16);
  CHECK(image.sizes() == golden.at("image_float").sizes());
  CHECK(image.isfinite().all().item<bool>());
}

TEST_CASE("pipeline input errors", "[pipeline]") {
  using Catch::Matchers::ContainsSubstring;
  FluxPipeline& p = pipeline_for("tiny-flux-dev");
  CHECK_THROWS_AS(p.encode_prompts({}, 512), fluxbatch::InputError);
  CHECK_THROWS_WITH(p.encode_prompts({"x"}, 513), ContainsSubstring("max_sequence_length"));
  const auto e = p.encode_prompts({"x"}, 16);
  DenoiseRequest r;
  r.width = r.height = 64;
  r.steps = 1;
  r.seeds = {1, 2};
  r.guidance = {3.5, 3.5};
  CHECK_THROWS_AS(p.denoise(e, r), fluxbatch::InputError);  // two seeds, one prompt
  CHECK_THROWS_AS(FluxPipeline((kModels / "no-such-model").string(), PipelineOptions{}), fluxbatch::ModelError);
}

TEST_CASE("variant probing and option defaults need no weights", "[pipeline]") {
  using fluxbatch::runtime::probe_variant;
  CHECK(probe_variant((kModels / "tiny-flux-dev").string()) == FluxVariant::kDev);
  CHECK(probe_variant((kModels / "tiny-flux-schnell").string()) == FluxVariant::kSchnell);
  CHECK(probe_variant((kModels / "tiny-flux-dev-bfl").string()) == FluxVariant::kDev);
  CHECK_THROWS_AS(probe_variant((kModels / "no-such-model").string()), fluxbatch::ModelError);
}

TEST_CASE("releasing, reloading and offloading text encoders change nothing", "[pipeline]") {
  const GoldenCase c = fluxbatch::test::read_golden_cases(kGolden).front();
  const auto reference = pipeline_for(c.model).encode_prompts(c.prompts, c.max_sequence_length);

  PipelineOptions lean;
  lean.keep_text_encoders = false;
  lean.residency = fluxbatch::runtime::Residency::kOffload;
  FluxPipeline p((kModels / c.model).string(), lean);
  for (int round = 0; round < 2; ++round) {  // the second round reloads CLIP and T5 from disk
    const auto e = p.encode_prompts(c.prompts, c.max_sequence_length);
    CHECK(at::equal(e.prompt_embeds, reference.prompt_embeds));
    CHECK(at::equal(e.pooled, reference.pooled));
  }
  p.release_text_encoders();
  const at::Tensor latents = p.denoise(reference, request_for(c));
  CHECK(at::equal(latents, pipeline_for(c.model).denoise(reference, request_for(c))));
}

TEST_CASE("staged residency loads each stage's components when it starts and renders the same", "[pipeline]") {
  const GoldenCase c = fluxbatch::test::read_golden_cases(kGolden).front();
  FluxPipeline& reference = pipeline_for(c.model);
  const auto embeddings = reference.encode_prompts(c.prompts, c.max_sequence_length);
  const at::Tensor latents = reference.denoise(embeddings, request_for(c));
  const at::Tensor pixels = reference.decode(latents, c.width, c.height);

  PipelineOptions options;
  options.residency = fluxbatch::runtime::Residency::kStaged;
  FluxPipeline p((kModels / c.model).string(), options);
  // Configs only: the variant, latent channels and VAE scale are known before any weight loads.
  CHECK(p.variant() == reference.variant());
  CHECK(p.latent_channels() == reference.latent_channels());
  CHECK(p.vae_scale_factor() == reference.vae_scale_factor());
  CHECK_FALSE(p.text_encoders_loaded());
  CHECK_FALSE(p.denoisers_loaded());
  CHECK(p.components().empty());
  for (int round = 0; round < 2; ++round) {  // the second round loads everything again, from disk
    const auto e = p.encode_prompts(c.prompts, c.max_sequence_length);
    CHECK(p.text_encoders_loaded());
    CHECK_FALSE(p.denoisers_loaded());  // never together with the text encoders
    CHECK(at::equal(e.prompt_embeds, embeddings.prompt_embeds));
    CHECK(at::equal(e.pooled, embeddings.pooled));
    const at::Tensor l = p.denoise(e, request_for(c));
    CHECK(p.denoisers_loaded());
    CHECK_FALSE(p.text_encoders_loaded());
    CHECK(at::equal(l, latents));
    CHECK(at::equal(p.decode(l, c.width, c.height), pixels));
    CHECK(p.components().size() == 2);
  }
  p.release_denoisers();
  CHECK_FALSE(p.denoisers_loaded());
}

TEST_CASE("prompts longer than the tokenizers' limits are truncated, not rejected", "[pipeline]") {
  std::string prompt;
  for (int i = 0; i < 200; ++i) prompt += "a very long prompt about word " + std::to_string(i) + ", ";
  FluxPipeline& p = pipeline_for("tiny-flux-schnell");
  const auto e = p.encode_prompts({prompt, "short", prompt}, 16);
  CHECK(e.prompt_embeds.sizes() == at::IntArrayRef({3, 16, 32}));
  CHECK(e.pooled.sizes() == at::IntArrayRef({3, 32}));
  CHECK(at::equal(e.prompt_embeds[0], e.prompt_embeds[2]));  // the duplicate is the same encoding
  CHECK_FALSE(at::equal(e.prompt_embeds[0], e.prompt_embeds[1]));
}
