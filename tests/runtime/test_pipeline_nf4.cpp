// FluxPipeline on the bitsandbytes-NF4 tiny FLUX.1-dev folders (scripts/make_nf4_models.py) against
// diffusers' FluxPipeline run on the same NF4 weights (fp32, CPU; every Linear computing
// F.linear(x, dequantize_4bit(W).to(x.dtype), bias), bnb MatMul4Bit's formula).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "test_support.h"
#include "tiny_render.h"

namespace fs = std::filesystem;
using namespace fluxbatch;

namespace {
const fs::path kModels = FLUXBATCH_MODELS_DIR;
}  // namespace

TEST_CASE("an NF4 diffusers folder renders what diffusers + bitsandbytes render (fp32, CPU)", "[nf4load]") {
  const std::string folder = GENERATE("tiny-flux-dev-nf4", "tiny-flux-dev-nf4-dq");
  INFO(folder);
  const fs::path root = test::require_generated(kModels / folder);
  const nn::TensorMap reference =
      nn::read_safetensors({test::require_generated(root / "reference" / "nf4_reference.safetensors").string()});

  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  runtime::FluxPipeline pipeline(root.string(), options);
  CHECK(pipeline.files().transformer.quantization == "bnb-nf4");
  CHECK(pipeline.variant() == runtime::FluxVariant::kDev);

  // scripts/make_nf4_models.py CASE
  const std::vector<std::string> prompts = {"a photo of a cat", "A painting of a red house at night, oil on canvas"};
  runtime::DenoiseRequest request;
  request.width = 64;
  request.height = 64;
  request.steps = 4;
  request.seeds = {0, 1};
  request.guidance = {3.5, 3.5};
  const auto embeddings = pipeline.encode_prompts(prompts, 512);
  const at::Tensor image = pipeline.decode(pipeline.denoise(embeddings, request), 64, 64);

  const at::Tensor want = reference.at("image_float");
  REQUIRE(image.sizes() == want.sizes());
  // Same weights, both fp32: only summation order differs, as in the dense golden test (1e-4).
  const double scale = want.abs().max().item<double>();
  const double err = (image.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / scale;
  INFO("relative error " << err);
  CHECK(err < 1e-4);
}

TEST_CASE("quantize_nf4 loads a dense folder as the NF4 folder bitsandbytes made from it", "[nf4load]") {
  const fs::path nf4 = test::require_generated(kModels / "tiny-flux-dev-nf4");
  const nn::TensorMap reference =
      nn::read_safetensors({test::require_generated(nf4 / "reference" / "nf4_reference.safetensors").string()});
  runtime::PipelineOptions options;
  options.dtype = at::kFloat;
  options.quantize_nf4 = true;
  const at::Tensor image = test::render_tiny(test::require_generated(kModels / "tiny-flux-dev").string(), options);
  const at::Tensor want = reference.at("image_float");
  REQUIRE(image.sizes() == want.sizes());
  // Our quantizer rounds like bnb on CUDA, the fixture came from bnb's CPU backend: they differ only on
  // values exactly on an NF4 threshold, so the images agree as closely as two fp32 runs.
  const double err = (image.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() /
                     want.abs().max().item<double>();
  INFO("relative error " << err);
  CHECK(err < 1e-4);
}
