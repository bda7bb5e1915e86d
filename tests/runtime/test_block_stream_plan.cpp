// Block streaming's planning (runtime/memory/block_stream_plan.h): the transformer's split into
// blocks, the resident count for a room, and what the planner then sees. Pure arithmetic: no
// weights, no device.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <numeric>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/block_stream_plan.h"

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch::runtime;

namespace {

constexpr int64_t MiB = int64_t{1} << 20;
constexpr int64_t GiB = int64_t{1} << 30;

// Two big blocks then three small ones, 10 MiB of the rest.
TransformerSplit toy_split() { return {10 * MiB, {100 * MiB, 100 * MiB, 40 * MiB, 40 * MiB, 40 * MiB}}; }

}  // namespace

TEST_CASE("FLUX.1's 12B transformer splits into 19 large and 38 small blocks", "[planner][stream]") {
  const fluxbatch::models::flux::FluxConfig dev;  // the defaults are FLUX.1-dev's
  const int64_t nf4 = static_cast<int64_t>(6.24 * GiB);
  const TransformerSplit split = flux_transformer_split(dev, nf4);
  REQUIRE(split.block_bytes.size() == 57);
  CHECK(split.total() == nf4);  // the parts add up exactly
  // A double block has 36 d² weights (+ biases), a single block 15 d²: 340 M and 142 M parameters.
  const double ratio = static_cast<double>(split.block_bytes[0]) / static_cast<double>(split.block_bytes[19]);
  CHECK(ratio > 2.39);
  CHECK(ratio < 2.41);
  CHECK(split.block_bytes[0] == split.block_bytes[18]);
  CHECK(split.block_bytes[19] == split.block_bytes[56]);
  // Embedders, norm_out and proj_out: about 0.5% of FLUX.1.
  CHECK(split.other_bytes > nf4 / 400);
  CHECK(split.other_bytes < nf4 / 100);
}

TEST_CASE("T5-XXL splits into its shared embedding and 24 equal blocks", "[planner][stream]") {
  const fluxbatch::models::t5::T5Config xxl;  // the defaults are T5-XXL's
  const int64_t bytes = 4 * GiB + 123;
  const TransformerSplit split = t5_encoder_split(xxl, bytes, 2);
  REQUIRE(split.block_bytes.size() == 24);
  CHECK(split.total() == bytes);
  CHECK(split.block_bytes.front() == split.block_bytes.back());
  CHECK(split.other_bytes >= 32128 * 4096 * 2);  // the bf16 embedding, never quantized
  CHECK(split.other_bytes < 32128 * 4096 * 2 + 4096 * 2 + 24);
  const BlockStreamPlan p = plan_block_stream(split, 3 * GiB);
  CHECK(p.resident_bytes <= 3 * GiB);
  CHECK(p.streamed_blocks() > 0);
  CHECK(describe_stream(p, "T5").find("T5 blocks resident") != std::string::npos);
  CHECK(describe_stream(p, "T5").find("per prompt over the bus") != std::string::npos);
  const std::vector<ComponentWeights> w = {{"text_encoder_2", bytes}, {"transformer", GiB}};
  CHECK(streamed_components(w, p, "text_encoder_2")[0].weight_bytes == p.resident_bytes);
  CHECK(streamed_components(w, p, "text_encoder_2")[1].weight_bytes == GiB);
}

TEST_CASE("the plan keeps as many leading blocks resident as the room allows", "[planner][stream]") {
  const TransformerSplit s = toy_split();
  // Everything fits: no ring.
  const BlockStreamPlan all = plan_block_stream(s, 1 * GiB);
  CHECK(all.resident_blocks == 5);
  CHECK(all.slots == 0);
  CHECK(all.streamed_bytes == 0);
  CHECK(all.resident_bytes == 330 * MiB);
  CHECK(all.fits);
  // 300 MiB: two big blocks resident (210) + two 40 MiB slots (80) = 290; the three small ones stream.
  const BlockStreamPlan two = plan_block_stream(s, 300 * MiB);
  CHECK(two.resident_blocks == 2);
  CHECK(two.streamed_blocks() == 3);
  CHECK(two.slots == 2);
  CHECK(two.slot_bytes == 40 * MiB);
  CHECK(two.resident_bytes == 290 * MiB);
  CHECK(two.streamed_bytes == 120 * MiB);
  // Three resident need 10 + 240 + two 40 MiB slots = 330, four 10 + 280 + one slot = 330: as much as all
  // five, so 329 MiB keeps two.
  const BlockStreamPlan almost = plan_block_stream(s, 329 * MiB);
  CHECK(almost.resident_blocks == 2);
  CHECK(plan_block_stream(s, 330 * MiB).resident_blocks == 5);
  // Nothing resident: the ring holds the largest block twice (210 MiB). One resident big block would
  // need 10 + 100 + 2 x 100 (the other big block streams) = 310 MiB: more, not less.
  const BlockStreamPlan none = plan_block_stream(s, 250 * MiB);
  CHECK(none.resident_blocks == 0);
  CHECK(none.fits);
  const BlockStreamPlan tight = plan_block_stream(s, 209 * MiB);
  CHECK(tight.resident_blocks == 0);
  CHECK(tight.slot_bytes == 100 * MiB);
  CHECK(tight.resident_bytes == 210 * MiB);
  CHECK_FALSE(tight.fits);  // 210 > 209: the caller learns it cannot fit
  CHECK(tight.streamed_bytes == 320 * MiB);
  CHECK(plan_block_stream(s, 210 * MiB).fits);
  // One slot: no double buffering, less memory.
  CHECK(plan_block_stream(s, 110 * MiB, 1).fits);
  CHECK_THROWS_AS(plan_block_stream(s, GiB, 0), fluxbatch::InputError);
  CHECK(describe_stream(two) == "2 of 5 transformer blocks resident, 3 streamed (120.0 MiB per step over the bus)");
}

TEST_CASE("the streamed denoise stage holds what the plan keeps, and auto picks stream last", "[planner][stream]") {
  const std::vector<ComponentWeights> w = {
      {"text_encoder", 246 * MiB}, {"text_encoder_2", 3 * GiB}, {"transformer", 6 * GiB + 256 * MiB}, {"vae", 160 * MiB}};
  const BlockStreamPlan p = plan_block_stream(flux_transformer_split({}, 6 * GiB + 256 * MiB), 2 * GiB);
  CHECK(p.resident_bytes <= 2 * GiB);
  CHECK(p.resident_blocks > 0);
  CHECK(p.resident_blocks < 57);
  const MemoryModel m = flux_memory_model(streamed_components(w, p), 2, Residency::kStream);
  CHECK(m.stages[1].resident == std::vector<std::string>{"transformer"});
  CHECK(m.weight_bytes(m.stages[1].resident) == p.resident_bytes);
  CHECK(m.stages[2].resident == std::vector<std::string>{"vae"});
  // The 1024² NF4 job of the issue: 6.25 GiB of transformer.
  CHECK(choose_residency(w, 16 * GiB) == Residency::kStaged);
  CHECK(choose_residency(w, 8 * GiB) == Residency::kOffload);  // 7/8 = 7 GiB holds it
  CHECK(choose_residency(w, 7 * GiB) == Residency::kStream);   // 7/8 = 6.125 GiB does not
  CHECK(choose_residency(w, 4 * GiB) == Residency::kStream);
  CHECK(std::string(residency_name(Residency::kStream)) == "stream");
}
