// Settings presets as a user meets them: --config NAME finds configs/NAME.json, flags win over it,
// it wins over built-in defaults, a job's "config" works the same, --print-config says where every
// setting came from, and a broken preset is reported like a broken job file (file:line:col, exit 2).
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

fs::path write_job(const TempDir& dir, const std::string& root = "") {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, "{" + root + R"( "defaults": {"width": 64}, "items": ["a red fox"]})");
  return path;
}

CommandResult print_config(const TempDir& dir, const std::string& args) {
  // A HOME without presets, so only the shipped configs/ and FLUXBATCH_CONFIG_PATH count.
  return fluxbatch::test::run_command("env HOME=" + quote(dir.path()) + " XDG_CONFIG_HOME= " + quote(FLUXBATCH_EXE) +
                                      " render --print-config --device cpu --model " + quote(tiny_model()) + " " +
                                      quote(dir / "job.json") + " " + args);
}

// The line of `name` in --print-config's table.
std::string row(const std::string& output, const std::string& name) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("  " + name + " ", 0) == 0) return line;
  }
  return "(no line for " + name + ")";
}

}  // namespace

TEST_CASE("a shipped preset by name (--config); flags win over it; --print-config says why", "[cli][config]") {
  TempDir dir;
  write_job(dir);
  const CommandResult r = print_config(dir, "--config low-vram-8g --offload off --steps 12");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("preset: low-vram-8g ("));
  CHECK_THAT(row(r.output, "quantize"), ContainsSubstring("nf4"));
  CHECK_THAT(row(r.output, "quantize"), ContainsSubstring("preset low-vram-8g"));
  CHECK_THAT(row(r.output, "vram_budget"), ContainsSubstring("7G"));
  CHECK_THAT(row(r.output, "offload"), ContainsSubstring("off"));
  CHECK_THAT(row(r.output, "offload"), ContainsSubstring("command line (--offload)"));
  CHECK_THAT(row(r.output, "write_threads"), ContainsSubstring("built-in default"));
  CHECK_THAT(row(r.output, "width"), ContainsSubstring("job file"));
  CHECK_THAT(row(r.output, "steps"), ContainsSubstring("12"));
  CHECK_THAT(row(r.output, "steps"), ContainsSubstring("command line"));
  CHECK_FALSE(fs::exists(dir / "out"));  // nothing rendered

  // Image defaults from a preset sit below the job and the command line, above the built-in ones.
  const CommandResult fast = print_config(dir, "--config schnell-fast");
  INFO(fast.output);
  REQUIRE(fast.exit_code == 0);
  CHECK_THAT(row(fast.output, "steps"), ContainsSubstring("4"));
  CHECK_THAT(row(fast.output, "steps"), ContainsSubstring("preset schnell-fast"));
  CHECK_THAT(row(fast.output, "max_sequence_length"), ContainsSubstring("256"));
  CHECK_THAT(row(fast.output, "width"), ContainsSubstring("job file"));
  CHECK_THAT(row(fast.output, "height"), ContainsSubstring("built-in default"));

  // Every shipped preset parses.
  for (const auto& entry : fs::directory_iterator(fs::path(FLUXBATCH_SOURCE_DIR) / "configs")) {
    const std::string name = entry.path().stem().string();
    const CommandResult each = print_config(dir, "--config " + name);
    INFO(name << ":\n" << each.output);
    CHECK(each.exit_code == 0);
    CHECK_THAT(each.output, ContainsSubstring("preset: " + name));
  }
}

TEST_CASE("a job's \"config\" names a preset file next to it; --config wins over it", "[cli][config]") {
  TempDir dir;
  fs::create_directories(dir / "presets");
  fluxbatch::test::write_file(dir / "presets" / "mine.json",
                              R"({"render": {"write_threads": 5, "cache": "../c"}, "defaults": {"steps": 9}})");
  write_job(dir, R"("config": "presets/mine.json",)");
  const CommandResult r = print_config(dir, "");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(row(r.output, "write_threads"), ContainsSubstring("5"));
  CHECK_THAT(row(r.output, "write_threads"), ContainsSubstring("preset mine"));
  CHECK_THAT(row(r.output, "cache"), ContainsSubstring((dir / "c").string()));  // relative to the preset
  CHECK_THAT(row(r.output, "steps"), ContainsSubstring("9"));
  const CommandResult over = print_config(dir, "--config throughput-h100");
  INFO(over.output);
  REQUIRE(over.exit_code == 0);
  CHECK_THAT(row(over.output, "write_threads"), ContainsSubstring("4"));
  CHECK_THAT(row(over.output, "steps"), ContainsSubstring("built-in default"));
  // FLUXBATCH_CONFIG_PATH makes a folder of presets known by name.
  const CommandResult by_name = fluxbatch::test::run_command(
      "env FLUXBATCH_CONFIG_PATH=" + quote(dir / "presets") + " " + quote(FLUXBATCH_EXE) +
      " render --print-config --device cpu --model " + quote(tiny_model()) + " " + quote(dir / "job.json") +
      " --config mine");
  INFO(by_name.output);
  CHECK_THAT(row(by_name.output, "write_threads"), ContainsSubstring("preset mine"));
}

TEST_CASE("a broken preset is reported like a job file: every problem, file:line:col, exit 2", "[cli][config]") {
  TempDir dir;
  write_job(dir);
  fluxbatch::test::write_file(dir / "bad.json", "{\n  \"render\": {\"vram_budgt\": \"7G\", \"offload\": \"maybe\",\n"
                                                "             \"write_threads\": 2.5},\n  \"defaults\": {\"stpes\": 4},\n"
                                                "  \"extra\": 1\n}\n");
  const CommandResult r = print_config(dir, "--config " + quote(dir / "bad.json"));
  INFO(r.output);
  CHECK(r.exit_code == 2);
  const std::string file = (dir / "bad.json").string();
  CHECK_THAT(r.output, ContainsSubstring(file + ":2:14 render.vram_budgt: unknown field (did you mean \"vram_budget\"?)"));
  CHECK_THAT(r.output, ContainsSubstring(file + ":2:45 render.offload: expected one of auto, on, off, stream, got \"maybe\""));
  CHECK_THAT(r.output, ContainsSubstring(file + ":3:31 render.write_threads: expected an integer from 0 to 64"));
  CHECK_THAT(r.output, ContainsSubstring(file + ":4:16 defaults.stpes: unknown field (did you mean \"steps\"?)"));
  CHECK_THAT(r.output, ContainsSubstring(file + ":5:3 extra: unknown field"));

  const CommandResult missing = print_config(dir, "--config low-vram-8");
  INFO(missing.output);
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.output, ContainsSubstring("--config: no preset named \"low-vram-8\" (did you mean \"low-vram-8g\"?)"));
  CHECK_THAT(missing.output, ContainsSubstring("schnell-fast"));
}

TEST_CASE("plan applies a preset as render does", "[cli][config]") {
  TempDir dir;
  write_job(dir, R"("config": "schnell-fast",)");
  const std::string plan = "env HOME=" + quote(dir.path()) + " " + quote(FLUXBATCH_EXE) +
                           " plan --json --device cpu --model " + quote(tiny_model()) + " " + quote(dir / "job.json");
  const CommandResult r = fluxbatch::test::run_command(plan + " --config low-vram-8g --vram-budget 6G");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const nlohmann::json p = nlohmann::json::parse(r.output);
  CHECK(p["quantize"] == "nf4");             // the preset
  CHECK(p["residency"] == "offload");        // the preset's offload on
  CHECK(p["budget_bytes"] == int64_t{6} << 30);  // the flag wins over the preset's 7G
  // The job's own "config" when there is no --config: schnell-fast's 256 tokens.
  const CommandResult job = fluxbatch::test::run_command(plan);
  INFO(job.output);
  REQUIRE(job.exit_code == 0);
  CHECK(nlohmann::json::parse(job.output)["groups"][0]["max_sequence_length"] == 256);
}
