// --offload stream as a user sees it on the CPU (the counting allocator enforces --vram-budget there):
// the tiny models, dense and NF4, render the resident run's PNG bytes; plan reports the streaming.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::quote;

namespace {

fs::path write_job(const TempDir& dir) {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "defaults": {"width": 64, "height": 64, "steps": 2, "seed": 7, "max_sequence_length": 32},
  "items": [{"prompt": "a red fox", "count": 2}, {"prompt": "a wide field", "width": 128}]
})");
  return path;
}

fs::path model(const std::string& folder) {
  return fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / folder);
}

CommandResult render(const TempDir& dir, const std::string& folder, const std::string& out, const std::string& args) {
  return fluxbatch::test::run_command("env FLUXBATCH_CACHE_DIR=" + quote((dir / "cache").string()) + " " +
                                      quote(FLUXBATCH_EXE) + " render --device cpu --batch 1 --model " +
                                      quote(model(folder)) + " --out " + quote((dir / out).string()) + " " + args +
                                      " " + quote(write_job(dir)));
}

}  // namespace

TEST_CASE("render --offload stream under a small budget writes the resident run's PNG bytes", "[cli][stream]") {
  for (const std::string folder : {"tiny-flux-dev", "tiny-flux-dev-nf4"}) {
    INFO(folder);
    TempDir dir;
    const CommandResult resident = render(dir, folder, "resident", "--offload off");
    INFO(resident.output);
    REQUIRE(resident.exit_code == 0);
    const CommandResult streamed = render(dir, folder, "streamed", "--offload stream --vram-budget 40M");
    INFO(streamed.output);
    REQUIRE(streamed.exit_code == 0);
    CHECK_THAT(streamed.output, ContainsSubstring("stream: components wait in host memory"));
    CHECK_THAT(streamed.output, ContainsSubstring("streaming plan: 0 of 4 transformer blocks resident, 4 streamed"));
    CHECK_THAT(streamed.output, ContainsSubstring("streaming: 0 of 2 T5 blocks resident, 2 streamed"));
    CHECK_THAT(streamed.output, ContainsSubstring("memory budget 40.0 MiB (--vram-budget), enforced"));
    int compared = 0;
    for (const auto& entry : fs::directory_iterator(dir / "resident")) {
      if (entry.path().extension() != ".png") continue;
      const fs::path twin = dir / "streamed" / entry.path().filename();
      REQUIRE(fs::exists(twin));
      CHECK(fluxbatch::test::read_file(twin) == fluxbatch::test::read_file(entry.path()));
      ++compared;
    }
    CHECK(compared == 3);
  }
}

TEST_CASE("plan --offload stream reports the blocks resident and the bytes streamed per step", "[cli][stream][planner]") {
  TempDir dir;
  const std::string env = "env FLUXBATCH_CACHE_DIR=" + quote((dir / "cache").string()) + " ";
  const std::string base = env + quote(FLUXBATCH_EXE) + " plan --device cpu --json --offload stream --model " +
                           quote(model("tiny-flux-dev")) + " " + quote(write_job(dir));
  const CommandResult tight = fluxbatch::test::run_command(base + " --vram-budget 40M");
  INFO(tight.output);
  REQUIRE(tight.exit_code == 0);
  const nlohmann::json t = nlohmann::json::parse(tight.output);
  CHECK(t["residency"] == "stream");
  CHECK(t["offload"] == true);
  CHECK(t["stream"]["blocks"] == 4);
  CHECK(t["stream"]["resident_blocks"] == 0);  // the activations' estimate leaves no room
  CHECK(t["stream"]["streamed_blocks"] == 4);
  CHECK(t["stream"]["slots"] == 2);
  CHECK(t["stream"]["streamed_bytes_per_step"].get<int64_t>() > 0);
  CHECK(t["stream"]["t5"]["blocks"] == 2);  // T5 for the encode stage
  CHECK(t["stream"]["t5"]["resident_blocks"] == 0);
  CHECK(t["stream"]["t5"]["streamed_bytes_per_prompt"].get<int64_t>() > 0);
  CHECK(t["groups"][0]["stages"][0]["name"] == "encode");
  const int64_t tight_encode = t["groups"][0]["stages"][0]["weight_bytes"].get<int64_t>();
  // The denoise stage holds the ring, not the transformer.
  const int64_t ring = t["stream"]["resident_bytes"].get<int64_t>();
  CHECK(t["groups"][0]["stages"][1]["name"] == "denoise");
  CHECK(t["groups"][0]["stages"][1]["weight_bytes"].get<int64_t>() == ring);

  const CommandResult roomy = fluxbatch::test::run_command(base + " --vram-budget 8G");
  INFO(roomy.output);
  REQUIRE(roomy.exit_code == 0);
  const nlohmann::json r = nlohmann::json::parse(roomy.output);
  CHECK(r["stream"]["resident_blocks"] == 4);
  CHECK(r["stream"]["t5"]["resident_blocks"] == 2);
  // The encode stage holds CLIP and what the T5 plan keeps (the ring, or all of T5).
  CHECK(r["groups"][0]["stages"][0]["weight_bytes"].get<int64_t>() - r["stream"]["t5"]["resident_bytes"].get<int64_t>() ==
        tight_encode - t["stream"]["t5"]["resident_bytes"].get<int64_t>());
  CHECK(t["stream"]["t5"]["resident_bytes"].get<int64_t>() < tight_encode);
  CHECK(r["stream"]["streamed_bytes_per_step"] == 0);
  CHECK(r["stream"]["resident_bytes"].get<int64_t>() > ring);

  const CommandResult text = fluxbatch::test::run_command(
      env + quote(FLUXBATCH_EXE) + " plan --device cpu --offload stream --vram-budget 40M --model " + quote(model("tiny-flux-dev")) +
      " " + quote(write_job(dir)));
  INFO(text.output);
  CHECK_THAT(text.output, ContainsSubstring("components stream"));
  CHECK_THAT(text.output, ContainsSubstring("streaming: 0 of 4 transformer blocks resident, 4 streamed"));
  // The 4 GiB preset streams (NF4, 3.5 GiB).
  const nlohmann::json preset = nlohmann::json::parse(
      fluxbatch::test::run_command(env + quote(FLUXBATCH_EXE) + " plan --device cpu --json --config low-vram-4g --model " +
                                   quote(model("tiny-flux-dev")) + " " + quote(write_job(dir)))
          .output);
  CHECK(preset["residency"] == "stream");
  CHECK(preset["quantize"] == "nf4");
  CHECK(preset["budget_bytes"] == int64_t{7} << 29);
  // Without --offload stream nothing streams.
  const nlohmann::json off = nlohmann::json::parse(
      fluxbatch::test::run_command(env + quote(FLUXBATCH_EXE) + " plan --device cpu --json --model " +
                                   quote(model("tiny-flux-dev")) + " " + quote(write_job(dir)))
          .output);
  CHECK(off["stream"].is_null());
}
