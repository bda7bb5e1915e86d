// FluxPipeline under block streaming (Residency::kStream) on the tiny models, dense and NF4: every
// resident count (none, some, all of the transformer's 4 blocks and T5's 2) renders exactly the
// resident pipeline's images.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <algorithm>
#include <string>

#include "fluxbatch/runtime/execution/pipeline.h"
#include "test_support.h"
#include "tiny_render.h"

namespace fs = std::filesystem;
using namespace fluxbatch;

TEST_CASE("streaming the transformer's blocks renders the resident run's images exactly", "[pipeline][stream]") {
  const std::string folder = GENERATE("tiny-flux-dev", "tiny-flux-dev-nf4");
  INFO(folder);
  const std::string model = test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / folder).string();
  runtime::PipelineOptions resident;
  resident.dtype = at::kFloat;
  const at::Tensor want = test::render_tiny(model, resident);
  for (const int blocks : {0, 1, 3, 4}) {
    INFO("resident blocks " << blocks);
    runtime::PipelineOptions stream = resident;
    stream.residency = runtime::Residency::kStream;
    stream.resident_blocks = blocks;
    stream.t5_resident_blocks = std::min(blocks, 2);
    CHECK(at::equal(test::render_tiny(model, stream), want));
  }
  runtime::PipelineOptions one_slot = resident;
  one_slot.residency = runtime::Residency::kStream;
  one_slot.stream_slots = 1;
  CHECK(at::equal(test::render_tiny(model, one_slot), want));
}

TEST_CASE("fp8 compute streams its fp8 weights and renders the same", "[pipeline][stream][fp8]") {
  const std::string model = test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev").string();
  runtime::PipelineOptions resident;
  resident.dtype = at::kFloat;
  resident.compute_fp8 = true;  // the CPU runs the fp32 reference of the fp8 arithmetic
  const at::Tensor want = test::render_tiny(model, resident);
  runtime::PipelineOptions stream = resident;
  stream.residency = runtime::Residency::kStream;
  stream.resident_blocks = 1;
  CHECK(at::equal(test::render_tiny(model, stream), want));
}
