// `fluxbatch plan`: the memory plan of a job from model headers, as text and as JSON.
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
using fluxbatch::test::fluxbatch_cmd;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

CommandResult plan_cmd(const std::string& args) { return fluxbatch_cmd("plan " + args); }

// Two sizes: three 64x64 images and one 128x64.
fs::path write_job(const TempDir& dir) {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "defaults": {"width": 64, "height": 64, "steps": 4, "seed": 1},
  "items": [
    {"prompt": "a red fox", "count": 3},
    {"prompt": "a wide field", "width": 128}
  ]
})");
  return path;
}


}  // namespace

TEST_CASE("plan prints stages, resident components, batch and peak per size", "[cli][planner]") {
  TempDir dir;
  const CommandResult r = plan_cmd(write_job(dir).string() + " --model " + tiny_model().string() + " --vram-budget 8G --dtype fp32");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("64x64, sequence 512: 3 image(s), batch 3"));
  CHECK_THAT(r.output, ContainsSubstring("128x64, sequence 512: 1 image(s), batch 1"));
  CHECK_THAT(r.output, ContainsSubstring("denoise"));
  // On the CPU --offload auto means staged: the text encoders never share the device with the rest.
  CHECK_THAT(r.output, ContainsSubstring("components staged"));
  CHECK_THAT(r.output, ContainsSubstring("resident: text_encoder, text_encoder_2\n"));
  CHECK_THAT(r.output, ContainsSubstring("resident: transformer, vae\n"));
  CHECK_THAT(r.output, ContainsSubstring("budget 8.00 GiB"));
}

TEST_CASE("plan --json gives the batch and predicted peak of every group", "[cli][planner]") {
  TempDir dir;
  const std::string job = write_job(dir).string();
  const CommandResult r = plan_cmd(job + " --model " + tiny_model().string() + " --vram-budget 200M --offload on --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const nlohmann::json plan = nlohmann::json::parse(r.output);
  CHECK(plan["budget_bytes"] == 200 << 20);
  CHECK(plan["offload"] == true);
  CHECK(plan["residency"] == "offload");
  REQUIRE(plan["groups"].size() == 2);
  const auto& g = plan["groups"][0];
  CHECK(g["width"] == 64);
  CHECK(g["images"] == 3);
  CHECK(g["batch_size"].get<int>() >= 1);
  CHECK(g["peak_bytes"].get<int64_t>() <= 200 << 20);
  REQUIRE(g["stages"].size() == 3);
  CHECK(g["stages"][1]["name"] == "denoise");
  CHECK(g["stages"][1]["resident"] == nlohmann::json::array({"transformer"}));
  CHECK(g["stages"][1]["peak_bytes"] ==
        g["stages"][1]["weight_bytes"].get<int64_t>() + g["stages"][1]["activation_bytes"].get<int64_t>());

  // A budget below the weights: batch 1, flagged.
  const nlohmann::json tight =
      nlohmann::json::parse(plan_cmd(job + " --model " + tiny_model().string() + " --vram-budget 1M --json").output);
  CHECK(tight["fits"] == false);
  CHECK(tight["groups"][0]["batch_size"] == 1);
}

TEST_CASE("plan rejects a bad size and a missing model", "[cli][planner]") {
  TempDir dir;
  const std::string job = write_job(dir).string();
  const CommandResult bad = plan_cmd(job + " --model " + tiny_model().string() + " --vram-budget 12Q");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, ContainsSubstring("--vram-budget: expected a size"));
  const CommandResult none = plan_cmd(job + " --vram-budget 1G");
  CHECK(none.exit_code == 2);
  CHECK_THAT(none.output, ContainsSubstring("no model"));
}

TEST_CASE("plan --compute fp8 counts the transformer's Linear weights at one byte", "[cli][planner][fp8]") {
  TempDir dir;
  const std::string job = write_job(dir).string() + " --model " + tiny_model().string() + " --vram-budget 8G --dtype bf16 --json";
  const auto denoise_weights = [](const CommandResult& r) {
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return nlohmann::json::parse(r.output)["groups"][0]["stages"][1]["weight_bytes"].get<int64_t>();
  };
  const int64_t bf16 = denoise_weights(plan_cmd(job));
  const int64_t fp8 = denoise_weights(plan_cmd(job + " --compute fp8"));
  CHECK(fp8 < bf16);
  CHECK(fp8 > bf16 / 3);  // the VAE and the non-Linear weights stay bf16
}

TEST_CASE("render --compute fp8 without fp8 tensor cores stops before loading anything (exit 2)", "[cli][fp8]") {
  TempDir dir;
  const CommandResult r = fluxbatch_cmd("render " + write_job(dir).string() + " --model " + tiny_model().string() +
                                        " --device cpu --compute fp8 --out " + quote((dir / "out").string()));
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, ContainsSubstring("--compute fp8 needs fp8 tensor cores"));
  CHECK_THAT(r.output, !ContainsSubstring("loaded"));
  CHECK_FALSE(fs::exists(dir / "out" / "manifest.jsonl"));
}

TEST_CASE("render and plan --help list --attention next to --compute", "[cli][fp8]") {
  for (const char* command : {"render --help", "plan --help"}) {
    const CommandResult r = fluxbatch_cmd(command);
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.output, ContainsSubstring("--compute"));
    CHECK_THAT(r.output, ContainsSubstring("--attention"));
  }
}

TEST_CASE("render and plan: --attention fp8 without --compute fp8 stops before loading anything (exit 2)", "[cli][fp8]") {
  TempDir dir;
  const std::string job = write_job(dir).string() + " --model " + tiny_model().string();
  const CommandResult r =
      fluxbatch_cmd("render " + job + " --device cpu --attention fp8 --out " + quote((dir / "out").string()));
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, ContainsSubstring("--attention fp8 needs --compute fp8"));
  CHECK_THAT(r.output, !ContainsSubstring("loaded"));
  CHECK_FALSE(fs::exists(dir / "out" / "manifest.jsonl"));

  const CommandResult plan = plan_cmd(job + " --vram-budget 8G --attention fp8");
  INFO(plan.output);
  CHECK(plan.exit_code == 2);
  CHECK_THAT(plan.output, ContainsSubstring("--attention fp8 needs --compute fp8"));
}

TEST_CASE("render --attention fp8 where cuDNN's fp8 attention cannot run stops before loading (exit 2)", "[cli][fp8]") {
  TempDir dir;
  const CommandResult r = fluxbatch_cmd("render " + write_job(dir).string() + " --model " + tiny_model().string() +
                                        " --device cpu --compute fp8 --attention fp8 --out " +
                                        quote((dir / "out").string()));
  INFO(r.output);
  CHECK(r.exit_code == 2);
  // The attention's requirement (compute capability 9.0) is named before --compute fp8's (8.9).
  CHECK_THAT(r.output, ContainsSubstring("--attention fp8 needs cuDNN's fp8 attention"));
  CHECK_THAT(r.output, ContainsSubstring("Use --attention bf16"));
  CHECK_THAT(r.output, !ContainsSubstring("loaded"));
  CHECK_FALSE(fs::exists(dir / "out" / "manifest.jsonl"));
}

TEST_CASE("render and plan take --attention bf16 or fp8 only (exit 2)", "[cli][fp8]") {
  TempDir dir;
  const std::string job = write_job(dir).string() + " --model " + tiny_model().string();
  for (const std::string& command : {"render " + job + " --device cpu --out " + quote((dir / "out").string()),
                                     "plan " + job + " --vram-budget 8G"}) {
    const CommandResult r = fluxbatch_cmd(command + " --compute fp8 --attention maybe");
    INFO(r.output);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, ContainsSubstring("--attention"));
  }
  CHECK_FALSE(fs::exists(dir / "out" / "manifest.jsonl"));
}

TEST_CASE("plan --attention fp8 counts the weights as --compute fp8 does", "[cli][planner][fp8]") {
  TempDir dir;
  const std::string job = write_job(dir).string() + " --model " + tiny_model().string() +
                          " --vram-budget 8G --dtype bf16 --json --compute fp8";
  const auto denoise_weights = [](const CommandResult& r) {
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return nlohmann::json::parse(r.output)["groups"][0]["stages"][1]["weight_bytes"].get<int64_t>();
  };
  CHECK(denoise_weights(plan_cmd(job + " --attention fp8")) == denoise_weights(plan_cmd(job)));
}

TEST_CASE("probe reports every CUDA device, or says there is none (exit 3)", "[cli][memory]") {
  const CommandResult r = fluxbatch_cmd("probe --json");
  INFO(r.output);
  if (r.exit_code == 3) {  // a CPU-only machine
    CHECK_THAT(r.output, ContainsSubstring("no CUDA device"));
    return;
  }
  REQUIRE(r.exit_code == 0);
  const nlohmann::json probe = nlohmann::json::parse(r.output);
  REQUIRE_FALSE(probe["devices"].empty());
  for (const auto& d : probe["devices"]) {
    CHECK(d["total_bytes"].get<int64_t>() > 0);
    CHECK(d["free_bytes"].get<int64_t>() <= d["total_bytes"].get<int64_t>());
    CHECK(d["usable_bytes"].get<int64_t>() >= d["free_bytes"].get<int64_t>() - d["allocated_bytes"].get<int64_t>());
  }
}

TEST_CASE("render checks --vram-budget before anything loads", "[cli][memory]") {
  TempDir dir;
  const std::string job = write_job(dir).string();
  const std::string exe = quote(FLUXBATCH_EXE) + " render " + job + " --dry-run --device cpu";
  const CommandResult bad = fluxbatch::test::run_command(exe + " --vram-budget lots");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, ContainsSubstring("--vram-budget: expected a size such as 512M"));
  const CommandResult ok = fluxbatch::test::run_command(exe + " --vram-budget 1.5G");
  INFO(ok.output);
  CHECK(ok.exit_code == 0);
}
