// FluxPipeline under block streaming (Residency::kStream) on the tiny models, dense and NF4: every
// resident count (none, some, all of the transformer's 4 blocks and T5's 2) renders exactly the
// resident pipeline's images; an encode out of memory streams more of T5 before anything else.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
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

TEST_CASE("an encode out of memory with T5 blocks resident streams more of T5 and keeps the device's image",
          "[pipeline][stream][oom]") {
  const std::string model = test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev").string();
  job::RenderItem item;
  item.prompt = "a lighthouse at dusk";
  item.params.seed = 5;
  item.params.width = 64;
  item.params.height = 64;
  item.params.steps = 2;
  item.params.max_sequence_length = 512;
  item.location = "test:stream-oom";
  const std::vector<const job::RenderItem*> items{&item};
  runtime::CpuMemoryBudget budget(std::numeric_limits<int64_t>::max());
  // One slot: T5's 2 blocks resident hold one block more than none resident (the ring's one slot).
  const auto options = [](int t5_resident) {
    runtime::GeneratorOptions o;
    o.residency = runtime::Residency::kStream;
    o.t5_resident_blocks = t5_resident;
    o.stream_slots = 1;
    o.prompt_cache_size = 0;
    return o;
  };
  // The encode stage's peak above what the generator holds before it (CLIP and T5 load within it).
  const auto encode_peak = [&](int t5_resident) {
    runtime::FluxGenerator generator(model, options(t5_resident));
    const int64_t before = budget.live_bytes();
    budget.reset_peak();
    generator.prepare(items);
    return budget.peak_bytes() - before;
  };
  const int64_t streamed_peak = encode_peak(0), resident_peak = encode_peak(2);
  INFO("encode peak with T5 streamed " << streamed_peak << " B, resident " << resident_peak << " B");
  REQUIRE(resident_peak > streamed_peak);

  runtime::GeneratorOptions reference_options;
  const runtime::Image want = runtime::FluxGenerator(model, reference_options).generate({item}).at(0);

  runtime::FluxGenerator generator(model, options(2));
  budget.set_budget_bytes(budget.live_bytes() + (streamed_peak + resident_peak) / 2);
  {
    runtime::CpuMemoryBudget::Scope scope(budget);
    generator.prepare(items);  // 2 resident: out of memory; 1 (+ 1 slot): again; none: fits
  }
  budget.set_budget_bytes(std::numeric_limits<int64_t>::max());
  CHECK(generator.stats().t5_stream_retries == 2);
  CHECK(generator.stats().cpu_encode_fallbacks == 0);
  CHECK(generator.stats().prompts_encoded == 1);
  const runtime::Image got = generator.generate({item}).at(0);
  CHECK(got.rgb == want.rgb);
  CHECK(got.cacheable);
  // Nothing resident left to give up: the next out of memory is the caller's (a CPU pipeline has no
  // CPU fallback either).
  CHECK_FALSE(generator.pipeline().stream_more_t5_blocks().has_value());
}
