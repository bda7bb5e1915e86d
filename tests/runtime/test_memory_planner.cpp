// plan_batches: a pure function of a linear memory model, resolution groups and a budget.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_planner.h"

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch::runtime;

namespace {

constexpr int64_t MiB = int64_t{1} << 20;
constexpr int64_t GiB = int64_t{1} << 30;

// Round numbers: 1 GiB weights per component, denoise costs 1 byte per pixel per dtype byte.
MemoryModel toy_model(bool offload) {
  MemoryModel m;
  m.dtype_size = 2;
  m.components = {{"clip", 1 * GiB}, {"dit", 4 * GiB}, {"vae", 1 * GiB}};
  const auto res = [&](std::vector<std::string> own) {
    return offload ? own : std::vector<std::string>{"clip", "dit", "vae"};
  };
  m.stages.push_back({"encode", res({"clip"}), {0.0, 1024.0, 0}});      // 1 MiB per 512-token image
  m.stages.push_back({"denoise", res({"dit"}), {1.0, 0.0, 100 * MiB}});  // 2 MiB per 1024² image
  m.stages.push_back({"decode", res({"vae"}), {8.0, 0.0, 0}});           // 16 MiB per 1024² image
  return m;
}

}  // namespace

TEST_CASE("stage costs are linear in the batch", "[planner]") {
  const StageCost c{1.0, 1024.0, 100 * MiB};
  CHECK(c.per_image_bytes(1024, 1024, 512, 2) == 2 * MiB + 1 * MiB);
  CHECK(c.bytes(1024, 1024, 512, 2, 1) == 103 * MiB);
  CHECK(c.bytes(1024, 1024, 512, 2, 4) == 100 * MiB + 12 * MiB);
  CHECK(c.bytes(512, 512, 512, 4, 1) == 100 * MiB + 1 * MiB + 2 * MiB);  // fp32 doubles per-image bytes
}

TEST_CASE("the batch is the largest whose every stage fits the budget", "[planner]") {
  const MemoryModel m = toy_model(/*offload=*/false);
  // Resident 6 GiB; decode needs 16 MiB per 1024² image: 6 GiB + 160 MiB allows 10 images.
  const Plan plan = plan_batches(m, {{1024, 1024, 512, 100}}, 6 * GiB + 160 * MiB);
  REQUIRE(plan.groups.size() == 1);
  const GroupPlan& g = plan.groups[0];
  CHECK(g.batch_size == 10);
  CHECK(g.fits);
  CHECK(g.limiting_stage == "decode");
  CHECK(g.peak_bytes == 6 * GiB + 160 * MiB);
  REQUIRE(g.stages.size() == 3);
  CHECK(g.stages[1].name == "denoise");
  CHECK(g.stages[1].weight_bytes == 6 * GiB);
  CHECK(g.stages[1].activation_bytes == 100 * MiB + 20 * MiB);
  CHECK(g.stages[1].peak_bytes == 6 * GiB + 120 * MiB);
  CHECK(plan.fits);
  CHECK(plan.peak_bytes == g.peak_bytes);
}

TEST_CASE("groups are planned independently; small sizes batch more", "[planner]") {
  const MemoryModel m = toy_model(false);
  const Plan plan = plan_batches(m, {{1024, 1024, 512, 100}, {512, 512, 512, 100}, {512, 512, 512, 3}},
                                 6 * GiB + 160 * MiB, 32);
  REQUIRE(plan.groups.size() == 3);
  CHECK(plan.groups[0].batch_size == 10);
  CHECK(plan.groups[1].batch_size == 32);  // 40 would fit: capped by max_batch
  CHECK(plan.groups[2].batch_size == 3);   // never more than the group's images
  CHECK(plan.groups[2].group.images == 3);
}

TEST_CASE("offloading keeps only the stage's components resident", "[planner]") {
  const MemoryModel m = toy_model(/*offload=*/true);
  const Plan plan = plan_batches(m, {{1024, 1024, 512, 64}}, 4 * GiB + 200 * MiB);
  const GroupPlan& g = plan.groups[0];
  // denoise: 4 GiB + 100 MiB + 2 MiB * b <= 4 GiB + 200 MiB -> 50; decode: 1 GiB + 16 MiB * b -> 64.
  CHECK(g.batch_size == 50);
  CHECK(g.limiting_stage == "denoise");
  CHECK(g.stages[0].resident == std::vector<std::string>{"clip"});
  CHECK(g.stages[0].weight_bytes == 1 * GiB);
}

TEST_CASE("a group that does not fit even alone is planned at batch 1 and flagged", "[planner]") {
  const Plan plan = plan_batches(toy_model(false), {{1024, 1024, 512, 8}, {256, 256, 512, 8}}, 5 * GiB);
  CHECK(plan.groups[0].batch_size == 1);
  CHECK_FALSE(plan.groups[0].fits);
  CHECK_FALSE(plan.fits);
}

TEST_CASE("bad planner input is rejected", "[planner]") {
  const MemoryModel m = toy_model(false);
  CHECK_THROWS_WITH(plan_batches(m, {{64, 64, 512, 1}}, 0), ContainsSubstring("budget must be positive"));
  CHECK_THROWS_WITH(plan_batches(m, {{0, 64, 512, 1}}, GiB), ContainsSubstring("0x64: sizes must be positive"));
  CHECK_THROWS_WITH(plan_batches(m, {{64, 64, 512, 1}}, GiB, 0), ContainsSubstring("max batch"));
  MemoryModel broken = m;
  broken.stages[0].resident = {"nope"};
  CHECK_THROWS_AS(plan_batches(broken, {{64, 64, 512, 1}}, GiB), fluxbatch::InputError);
}

TEST_CASE("two measured peaks calibrate a stage exactly", "[planner]") {
  // A stage with 3 GiB of weights, 50 MiB fixed, 40 MiB per 768x1024 bf16 image.
  const int64_t weights = 3 * GiB;
  const int64_t p1 = weights + 50 * MiB + 40 * MiB;
  const int64_t p2 = weights + 50 * MiB + 80 * MiB;
  const StageCost c = calibrate_stage(p1, p2, weights, 768, 1024, 512, 2, /*by_tokens=*/false);
  CHECK(c.fixed_bytes == 50 * MiB);
  CHECK(c.bytes_per_token == 0.0);
  CHECK(c.bytes(768, 1024, 512, 2, 5) == 50 * MiB + 200 * MiB);
  CHECK(c.bytes(768, 512, 512, 2, 2) == 50 * MiB + 40 * MiB);  // half the pixels, half the bytes

  const StageCost t = calibrate_stage(p1, p2, weights, 768, 1024, 256, 2, /*by_tokens=*/true);
  CHECK(t.bytes_per_pixel == 0.0);
  CHECK(t.bytes(64, 64, 512, 2, 1) == 50 * MiB + 80 * MiB);  // twice the tokens
  CHECK_THROWS_WITH(calibrate_stage(p2, p1, weights, 64, 64, 512, 2, false), ContainsSubstring("below the batch-1"));
}

TEST_CASE("the FLUX default model has three stages and sane first guesses", "[planner]") {
  const std::vector<ComponentWeights> w = {
      {"text_encoder", 246 * MiB}, {"text_encoder_2", 9 * GiB}, {"transformer", 22 * GiB}, {"vae", 160 * MiB}};
  const MemoryModel resident = flux_memory_model(w, 2, Residency::kDevice);
  REQUIRE(resident.stages.size() == 3);
  CHECK(resident.stages[0].name == "encode");
  CHECK(resident.stages[1].name == "denoise");
  CHECK(resident.stages[2].name == "decode");
  CHECK_FALSE(resident.calibrated);
  // About 1 GiB per 1024² bf16 image in the transformer, about 4.3 GiB in the VAE decode.
  const int64_t denoise = resident.stages[1].cost.per_image_bytes(1024, 1024, 512, 2);
  const int64_t decode = resident.stages[2].cost.per_image_bytes(1024, 1024, 512, 2);
  CHECK(denoise > 900 * MiB);
  CHECK(denoise < 1100 * MiB);
  CHECK(decode > 4 * GiB);
  CHECK(decode < 5 * GiB);
  // Stage-major: the text encoders are freed after encoding, so denoise and decode hold the
  // transformer and the VAE (22.2 GiB) and the VAE decode limits a 76 GiB budget to 12 images.
  CHECK(resident.stages[0].resident.size() == 4);
  CHECK(resident.stages[1].resident == std::vector<std::string>{"transformer", "vae"});
  CHECK(resident.stages[2].resident == std::vector<std::string>{"transformer", "vae"});
  const Plan plan = plan_batches(resident, {{1024, 1024, 512, 64}}, 76 * GiB);
  CHECK(plan.groups[0].batch_size == 12);
  CHECK(plan.groups[0].limiting_stage == "decode");
  const MemoryModel offload = flux_memory_model(w, 2, Residency::kOffload);
  CHECK(offload.weight_bytes(offload.stages[1].resident) == 22 * GiB);
  CHECK(offload.stages[2].resident == std::vector<std::string>{"vae"});
  // Staged: the encode stage holds only the text encoders, so it no longer limits anything.
  const MemoryModel staged = flux_memory_model(w, 2, Residency::kStaged);
  CHECK(staged.stages[0].resident == std::vector<std::string>{"text_encoder", "text_encoder_2"});
  CHECK(staged.stages[1].resident == std::vector<std::string>{"transformer", "vae"});
  CHECK(plan_group(staged, {1024, 1024, 512, 1}, 1).stages[0].peak_bytes <
        plan_group(resident, {1024, 1024, 512, 1}, 1).stages[0].peak_bytes - 22 * GiB);
}

TEST_CASE("offload auto: offloads when the denoise weights take over 3/4 of the budget", "[planner]") {
  const std::vector<ComponentWeights> w = {
      {"text_encoder", 246 * MiB}, {"text_encoder_2", 3 * GiB}, {"transformer", 6 * GiB}, {"vae", 160 * MiB}};
  // Transformer + VAE = 6.16 GiB; the text encoders do not count (they never share the device with them).
  CHECK(denoise_weight_bytes(w) == 6 * GiB + 160 * MiB);
  CHECK(choose_residency(w, 9 * GiB) == Residency::kStaged);        // 3/4 = 6.75 GiB
  CHECK(choose_residency(w, 8 * GiB) == Residency::kOffload);       // 3/4 = 6 GiB
  CHECK(choose_residency(w, 7 * GiB) == Residency::kOffload);
  CHECK(std::string(residency_name(Residency::kStaged)) == "staged");
  CHECK(std::string(residency_name(Residency::kOffload)) == "offload");
  CHECK(std::string(residency_name(Residency::kDevice)) == "device");
}
