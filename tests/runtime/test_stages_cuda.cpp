// The encode stage's out-of-memory fallback on CUDA: CLIP and T5 moved to the CPU still give the
// device the same embeddings. Reported as skipped (never silently passed) without a CUDA device.
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "test_support.h"

namespace fs = std::filesystem;

TEST_CASE("on CUDA, text encoders moved to the CPU encode the same embeddings onto the device", "[stages][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  fluxbatch::runtime::GeneratorOptions options;
  options.device = c10::Device(c10::kCUDA, 0);
  options.dtype = at::kFloat;
  fluxbatch::runtime::FluxGenerator gen(
      fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev").string(), options);
  auto& pipeline = gen.pipeline();
  const std::vector<std::string> prompts = {"a red fox in the snow", "a lighthouse"};
  const auto on_device = pipeline.encode_prompts(prompts, 128);
  CHECK_FALSE(pipeline.text_encoders_on_cpu());
  REQUIRE(pipeline.move_text_encoders_to_cpu());
  CHECK(pipeline.text_encoders_on_cpu());
  CHECK_FALSE(pipeline.move_text_encoders_to_cpu());  // once
  const auto on_cpu = pipeline.encode_prompts(prompts, 128);
  CHECK(on_cpu.prompt_embeds.is_cuda());
  CHECK(on_cpu.pooled.is_cuda());
  // fp32 on both; cuBLAS may use TF32, so not bit for bit.
  CHECK(at::allclose(on_cpu.prompt_embeds, on_device.prompt_embeds, 1e-3, 1e-3));
  CHECK(at::allclose(on_cpu.pooled, on_device.pooled, 1e-3, 1e-3));
  // Released and loaded again, they stay on the CPU.
  pipeline.release_text_encoders();
  const auto reloaded = pipeline.encode_prompts(prompts, 128);
  CHECK(at::equal(reloaded.prompt_embeds, on_cpu.prompt_embeds));
}
