// Memory behaviour of render and plan as a user sees it: the allocator setting, --batch auto's
// calibration (measured once, then reused from the cache), predicted next to measured peaks, the
// end-of-run memory summary in the log and in manifest.jsonl, and resuming past that line.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "fluxbatch/io/manifest.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

// Three 64x64 images and one 128x64, tiny sizes so the CPU renders them in seconds.
fs::path write_job(const TempDir& dir) {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": "out"},
  "defaults": {"width": 64, "height": 64, "steps": 1, "seed": 1, "max_sequence_length": 32},
  "items": [{"prompt": "a red fox", "count": 3}, {"prompt": "a wide field", "width": 128}]
})");
  return path;
}

CommandResult run(const TempDir& dir, const std::string& args, const std::string& env = "") {
  return fluxbatch::test::run_command("env -u PYTORCH_ALLOC_CONF -u PYTORCH_CUDA_ALLOC_CONF FLUXBATCH_CACHE_DIR=" +
                                      quote((dir / "cache").string()) + " " + env + " " + quote(FLUXBATCH_EXE) +
                                      " " + args);
}


}  // namespace

TEST_CASE("the log names the allocator settings in force and who set them", "[cli][memmon]") {
  TempDir dir;
  const std::string job = quote(write_job(dir).string());
  const CommandResult ours = run(dir, "-v render --dry-run --device cpu " + job);
  CHECK_THAT(ours.output, ContainsSubstring("allocator: expandable_segments:True (set by fluxbatch)"));
  const CommandResult theirs =
      run(dir, "-v render --dry-run --device cpu " + job, "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128");
  CHECK_THAT(theirs.output, ContainsSubstring("allocator: max_split_size_mb:128 (from PYTORCH_CUDA_ALLOC_CONF)"));
}

TEST_CASE("render --batch auto calibrates once, plans per size and records memory", "[cli][memmon]") {
  TempDir dir;
  const std::string job = quote(write_job(dir).string());
  const std::string args = "render --device cpu --model " + quote(tiny_model().string()) + " --monitor-interval 5 " + job;
  const CommandResult first = run(dir, args);
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.output, ContainsSubstring("calibration for 64x64, sequence 32: measuring each stage at batch 1 and 2"));
  CHECK_THAT(first.output, ContainsSubstring("calibration stored in"));
  CHECK_THAT(first.output, ContainsSubstring("plan for 64x64, sequence 32: batch 3"));
  CHECK_THAT(first.output, ContainsSubstring("plan for 128x64, sequence 32: batch 1"));
  CHECK_THAT(first.output, ContainsSubstring("batch of 3 at 64x64"));
  CHECK_THAT(first.output, ContainsSubstring("predicted"));
  CHECK_THAT(first.output, ContainsSubstring("(calibrated)"));
  CHECK_THAT(first.output, ContainsSubstring("memory: denoise peak"));
  CHECK_THAT(first.output, ContainsSubstring("memory: allocator retries 0"));
  REQUIRE(fs::exists(dir / "cache" / "calibration.json"));
  const nlohmann::json cache = nlohmann::json::parse(fluxbatch::test::read_file(dir / "cache" / "calibration.json"));
  CHECK(cache["entries"].size() == 2);

  // The manifest ends with the run's summary; item readers are not disturbed by it.
  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  std::istringstream lines(fluxbatch::test::read_file(manifest));
  std::string line, last;
  while (std::getline(lines, line)) last = line;
  const nlohmann::json summary = nlohmann::json::parse(last);
  CHECK(summary["event"] == "summary");
  CHECK(summary["rendered"] == 4);
  CHECK(summary["memory"]["device"] == "cpu");
  CHECK(summary["memory"]["budget_bytes"].get<int64_t>() > 0);
  std::vector<std::string> stages;
  for (const auto& s : summary["memory"]["stages"]) {
    stages.push_back(s["stage"]);
    // Staged (--offload auto on the CPU): "load" is the text encoders, then the transformer and VAE,
    // each loaded once; "calibrate" the measurements made with them.
    CHECK(s["peak_allocated_bytes"].get<int64_t>() > 0);
  }
  CHECK(stages == std::vector<std::string>{"load", "calibrate", "encode", "denoise", "decode"});
  const auto contents = fluxbatch::io::read_manifest(manifest.string());
  CHECK(contents.entries.size() == 4);
  CHECK(contents.skipped.empty());
  CHECK(contents.events == 1);

  // Again: everything resumes as finished (the summary line does not count), nothing recalibrates.
  const CommandResult again = run(dir, args);
  INFO(again.output);
  CHECK(again.exit_code == 0);
  CHECK_THAT(again.output, ContainsSubstring("0 rendered, 4 skipped"));
  CHECK_THAT(again.output, ContainsSubstring("0 image(s) to render"));
  CHECK_FALSE(again.output.find("measuring") != std::string::npos);
  // Staged: nothing to render, so no weights are loaded.
  CHECK_FALSE(again.output.find("loaded text encoders") != std::string::npos);
  CHECK_FALSE(again.output.find("loaded transformer") != std::string::npos);

  // With --overwrite the calibration comes from the cache.
  const CommandResult overwrite = run(dir, args + " --overwrite");
  INFO(overwrite.output);
  CHECK(overwrite.exit_code == 0);
  CHECK_THAT(overwrite.output, ContainsSubstring("calibration for 64x64, sequence 32: from"));
  CHECK_FALSE(overwrite.output.find("measuring") != std::string::npos);

  // plan reads the same cache: every group is calibrated.
  const CommandResult plan = run(dir, "plan --device cpu --json --model " + quote(tiny_model().string()) + " " + job);
  INFO(plan.output);
  REQUIRE(plan.exit_code == 0);
  const nlohmann::json p = nlohmann::json::parse(plan.output);
  CHECK(p["calibrated"] == true);
  CHECK(p["groups"][0]["calibrated"] == true);
  CHECK(p["groups"][0]["batch_size"] == 3);
}

TEST_CASE("a fixed --batch logs the built-in prediction and warns past the threshold", "[cli][memmon]") {
  TempDir dir;
  const std::string job = quote(write_job(dir).string());
  // A budget the weights alone nearly fill: the monitor warns once per stage.
  const CommandResult r = run(dir, "render --device cpu --batch 1 --vram-budget 40M --monitor-threshold 0.05 --model " +
                                       quote(tiny_model().string()) + " " + job);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("calibration for 64x64, sequence 32: none cached; using the built-in estimates"));
  CHECK_THAT(r.output, ContainsSubstring("(uncalibrated)"));
  CHECK_THAT(r.output, ContainsSubstring("memory budget 40.0 MiB (--vram-budget), enforced"));
  CHECK_THAT(r.output, ContainsSubstring("memory: denoise uses"));
  CHECK_THAT(r.output, ContainsSubstring("of the 40.0 MiB budget (warning threshold 5%)"));
  CHECK_FALSE(fs::exists(dir / "cache" / "calibration.json"));  // only --batch auto measures
}

TEST_CASE("plan and render check --vram-reserve", "[cli][memmon]") {
  TempDir dir;
  const std::string job = quote(write_job(dir).string());
  const CommandResult bad = run(dir, "plan --device cpu --model " + quote(tiny_model().string()) + " --vram-reserve much " + job);
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, ContainsSubstring("--vram-reserve: expected a size"));
  const CommandResult huge = run(dir, "plan --device cpu --model " + quote(tiny_model().string()) + " --vram-reserve 100T " + job);
  CHECK(huge.exit_code == 3);
  CHECK_THAT(huge.output, ContainsSubstring("no memory left for the run"));
  const CommandResult render = run(dir, "render -n --device cpu --vram-reserve 1x " + job);
  CHECK(render.exit_code == 2);
}
