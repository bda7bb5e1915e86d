// FluxPipeline on CUDA against the CPU goldens. Reported as skipped (never silently passed) on
// machines without a CUDA device, such as CI. cuDNN convolutions use TF32 by default in fp32 (as in
// diffusers), so the VAE output is compared more loosely than on the CPU.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "../sampling/golden_cases.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/sampling/postprocess.h"

namespace fs = std::filesystem;
using fluxbatch::runtime::DenoiseRequest;
using fluxbatch::runtime::FluxPipeline;
using fluxbatch::runtime::PipelineOptions;

namespace {

const fs::path kGolden = FLUXBATCH_GOLDEN_DIR;
const fs::path kModels = FLUXBATCH_MODELS_DIR;

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  REQUIRE(got.sizes() == want.sizes());
  const double scale = std::max(want.abs().max().item<double>(), 1e-12);
  return (got.cpu().to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / scale;
}

DenoiseRequest request_for(const fluxbatch::test::GoldenCase& c) {
  DenoiseRequest r;
  r.width = c.width;
  r.height = c.height;
  r.steps = c.steps;
  r.seeds = c.seeds;
  r.guidance.assign(c.seeds.size(), c.guidance);
  return r;
}

}  // namespace

TEST_CASE("pipeline on CUDA matches the goldens (fp32) and runs in bf16", "[pipeline][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  for (const auto& c : fluxbatch::test::read_golden_cases(kGolden)) {
    INFO("case " << c.index);
    const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file);
    PipelineOptions options;
    options.device = c10::Device(c10::kCUDA, 0);
    options.dtype = at::kFloat;
    FluxPipeline p((kModels / c.model).string(), options);
    const auto embeddings = p.encode_prompts(c.prompts, c.max_sequence_length);
    CHECK(embeddings.prompt_embeds.is_cuda());
    CHECK(relative_error(embeddings.prompt_embeds, golden.at("prompt_embeds")) < 1e-4);
    CHECK(relative_error(embeddings.pooled, golden.at("pooled_prompt_embeds")) < 1e-4);
    const at::Tensor latents = p.denoise(embeddings, request_for(c));
    CHECK(relative_error(latents, golden.at("latents_" + std::to_string(c.steps - 1))) < 1e-3);
    const at::Tensor pixels = fluxbatch::sampling::postprocess_uint8(p.decode(latents, c.width, c.height));
    const at::Tensor diff = (pixels.to(at::kInt) - golden.at("image_uint8").to(at::kInt)).abs();
    CHECK(diff.le(1).to(at::kDouble).mean().item<double>() >= 0.99);
    CHECK(diff.max().item<int>() <= 4);
  }

  const auto c = fluxbatch::test::read_golden_cases(kGolden).front();
  PipelineOptions bf16;
  bf16.device = c10::Device(c10::kCUDA, 0);
  bf16.dtype = at::kBFloat16;
  FluxPipeline resident((kModels / c.model).string(), bf16);
  const at::Tensor pixels = resident.generate(c.prompts, c.max_sequence_length, request_for(c));
  CHECK(pixels.sizes() == fluxbatch::test::read_golden_tensors(kGolden / c.file).at("image_uint8").sizes());
  // Offloaded (pinned host copies, two rounds: the second reads host copies a trip left as they were)
  // and staged (loaded per stage) run the same kernels on the same weights: the same pixels.
  for (const auto residency : {fluxbatch::runtime::Residency::kOffload, fluxbatch::runtime::Residency::kStaged}) {
    INFO(fluxbatch::runtime::residency_name(residency));
    bf16.residency = residency;
    FluxPipeline p((kModels / c.model).string(), bf16);
    for (int round = 0; round < 2; ++round) {
      CHECK(at::equal(p.generate(c.prompts, c.max_sequence_length, request_for(c)), pixels));
    }
  }
}

TEST_CASE("on CUDA, an image rendered alone and in a batch of four are identical", "[pipeline][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  // Every image gets its own GEMMs (ops::per_image_linear), so the batch size changes no value:
  // exactly equal, in fp32 and in bf16 (where random tiny weights amplify any kernel difference), with
  // dense and with NF4 weights.
  const auto [dtype, nf4] = GENERATE(std::make_pair(at::kFloat, false), std::make_pair(at::kBFloat16, false),
                                     std::make_pair(at::kBFloat16, true));
  INFO("dtype " << c10::toString(dtype) << ", nf4 " << nf4);
  fluxbatch::runtime::GeneratorOptions options;
  options.device = c10::Device(c10::kCUDA, 0);
  options.dtype = dtype;
  options.quantize_nf4 = nf4;
  auto generator = fluxbatch::runtime::make_flux_generator((kModels / "tiny-flux-dev").string(), options);
  std::vector<fluxbatch::job::RenderItem> items(4);
  const std::vector<std::string> prompts = {"a green apple", "a tall tower", "a blue bird on a branch", "snow"};
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].prompt = prompts[i];
    items[i].params.seed = 11 + i;
    items[i].params.width = 48;
    items[i].params.height = 32;
    items[i].params.steps = 4;
  }
  const auto batch = generator->generate(items);
  for (size_t i = 0; i < items.size(); ++i) {
    const auto alone = generator->generate({items[i]});
    int worst = 0;
    for (size_t k = 0; k < alone[0].rgb.size(); ++k) {
      worst = std::max(worst, std::abs(int(alone[0].rgb[k]) - int(batch[i].rgb[k])));
    }
    INFO("item " << i << ": largest pixel difference " << worst);
    CHECK(worst == 0);
  }
}
