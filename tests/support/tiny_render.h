// The reference render of the tiny pipelines' fixture comparisons (torch tests only): two prompts, 64x64,
// 4 steps, seeds 0 and 1, guidance 3.5, 512 T5 tokens; decoded images [2, 3, 64, 64] in options.dtype.
// The fixture scripts (make_nf4_models.py, make_forge_nf4.py, make_fp8_fixtures.py' reference folders)
// assume exactly these settings.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "fluxbatch/runtime/execution/pipeline.h"

namespace fluxbatch::test {

inline at::Tensor render_tiny(const std::string& model, const runtime::PipelineOptions& options) {
  runtime::FluxPipeline pipeline(model, options);
  const std::vector<std::string> prompts = {"a photo of a cat", "A painting of a red house at night, oil on canvas"};
  runtime::DenoiseRequest request;
  request.width = 64;
  request.height = 64;
  request.steps = 4;
  request.seeds = {0, 1};
  request.guidance = {3.5, 3.5};
  return pipeline.decode(pipeline.denoise(pipeline.encode_prompts(prompts, 512), request), 64, 64);
}

}  // namespace fluxbatch::test
