// What a person watching a render sees, and what it costs: a first run (calibration included) loads
// every component once; the live status line on a pseudo-terminal (script(1)); colour and NO_COLOR;
// the periodic progress lines without a terminal; -q; the JSON events; and the end-of-job summary in
// the log and the manifest.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

// Four 64x64 images and one 128x64 (two sizes: two calibrations).
fs::path write_job(const TempDir& dir, int steps = 2) {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": "out"},
  "defaults": {"width": 64, "height": 64, "steps": )" + std::to_string(steps) + R"(, "seed": 1, "max_sequence_length": 32},
  "items": [{"prompt": "a red fox", "count": 3}, "a blue bird", {"prompt": "a wide field", "width": 128}]
})");
  return path;
}

// `fluxbatch ARGS` with its own calibration cache and the allocator left to fluxbatch.
std::string command(const TempDir& dir, const std::string& args) {
  return "env -u PYTORCH_ALLOC_CONF -u PYTORCH_CUDA_ALLOC_CONF FLUXBATCH_CACHE_DIR=" + quote(dir / "cache") + " " +
         quote(FLUXBATCH_EXE) + " " + args;
}

std::string render_args(const TempDir& dir, const std::string& extra = "") {
  return "render --device cpu --model " + quote(tiny_model()) + " " + quote(write_job(dir)) + " " + extra;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

// Under script(1): stdin, stdout and stderr are a pseudo-terminal.
CommandResult on_terminal(const std::string& command_line, const std::string& env = "") {
  return fluxbatch::test::run_command("env TERM=xterm COLUMNS=200 " + env + " script -qec " + quote(command_line) +
                                      " /dev/null < /dev/null");
}

nlohmann::json last_manifest_line(const fs::path& manifest) {
  std::istringstream lines(fluxbatch::test::read_file(manifest));
  std::string line, last;
  while (std::getline(lines, line)) last = line;
  return nlohmann::json::parse(last);
}

}  // namespace

TEST_CASE("a first run loads every component once, calibration included", "[cli][progress][calibration]") {
  for (const std::string& offload : {"off", "on", "stream"}) {
    INFO("--offload " << offload);
    TempDir dir;
    const CommandResult r = fluxbatch::test::run_command(command(dir, render_args(dir, "--offload " + offload)));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    // Both sizes were measured (nothing was cached) ...
    CHECK(count(r.output, "measuring each stage at batch 1 and 2") == 2);
    CHECK_THAT(r.output, ContainsSubstring("plan for 64x64, sequence 32: batch 4"));
    CHECK_THAT(r.output, ContainsSubstring("(calibrated)"));
    // ... with the components the job's own stages use.
    CHECK(count(r.output, "loaded text encoders") == 1);
    CHECK(count(r.output, "loaded transformer and VAE") == 1);
    CHECK(count(r.output, "encode stage: 3 prompt(s)") == 1);
    CHECK(fs::exists(dir / "out" / "manifest.jsonl"));
  }
}

TEST_CASE("on a terminal one status line is redrawn in place and log lines go above it", "[cli][progress]") {
  TempDir dir;
  const CommandResult r = on_terminal(command(dir, "-v " + render_args(dir, "--batch 2")));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  // The line: "\r" + erase-line, then the images, the batch and its step, memory and elapsed time.
  CHECK(count(r.output, "\r\033[K") >= 4);
  CHECK_THAT(r.output, ContainsSubstring("\r\033[K0/5 images (0%)"));
  CHECK_THAT(r.output, ContainsSubstring("| batch 1/3 (2 images)"));
  CHECK_THAT(r.output, ContainsSubstring(" | mem "));
  CHECK_THAT(r.output, ContainsSubstring(" elapsed"));
  // It is gone before the summary: the last status line is erased, not left on screen.
  const size_t last_erase = r.output.rfind("\r\033[K");
  const size_t done = r.output.find("done: 5 rendered");
  REQUIRE(done != std::string::npos);
  CHECK(last_erase < done);
  CHECK(r.output.substr(last_erase, r.output.find('\n', last_erase) - last_erase).find("images") == std::string::npos);
  // Colour on a terminal (the debug tag is dim) ...
  CHECK_THAT(r.output, ContainsSubstring("\033[2mdebug\033[0m"));

  // ... but not with NO_COLOR, which leaves the status line itself alone.
  TempDir plain;
  const CommandResult nc = on_terminal(command(plain, "-v " + render_args(plain, "--batch 2")), "NO_COLOR=1");
  INFO(nc.output);
  REQUIRE(nc.exit_code == 0);
  CHECK(nc.output.find("\033[2m") == std::string::npos);
  CHECK(nc.output.find("\033[0m") == std::string::npos);
  CHECK_THAT(nc.output, ContainsSubstring("\r\033[K0/5 images (0%)"));
}

TEST_CASE("without a terminal: per-image lines and a progress line every --progress-interval", "[cli][progress]") {
  TempDir dir;
  const CommandResult r =
      fluxbatch::test::run_command(command(dir, render_args(dir, "--batch 1 --progress-interval 0.1")));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(r.output.find('\r') == std::string::npos);
  CHECK(r.output.find("\033[") == std::string::npos);
  CHECK(count(r.output, "] out/") + count(r.output, "/out/") >= 5);  // "[k/5] .../out/<file> (x s)"
  CHECK_THAT(r.output, ContainsSubstring("[5/5] "));
  CHECK_THAT(r.output, ContainsSubstring("progress: "));
  CHECK_THAT(r.output, ContainsSubstring("/5 images ("));

  // -q: warnings and errors only; no progress, no per-image lines.
  TempDir quiet;
  const CommandResult q =
      fluxbatch::test::run_command(command(quiet, "-q " + render_args(quiet, "--batch 1 --progress-interval 0.1")));
  INFO(q.output);
  CHECK(q.exit_code == 0);
  CHECK(q.output.find("progress") == std::string::npos);
  CHECK(q.output.find("info ") == std::string::npos);
  CHECK(fs::exists(quiet / "out" / "manifest.jsonl"));
}

TEST_CASE("progress json: the events go to stdout, one object per line", "[cli][progress]") {
  TempDir dir;
  const CommandResult r =
      fluxbatch::test::run_command("(" + command(dir, "-q " + render_args(dir, "--batch 2 --progress json")) + " 2>/dev/null)");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::istringstream lines(r.output);
  std::string line;
  std::vector<std::string> kinds;
  int images = 0, steps = 0;
  nlohmann::json done;
  while (std::getline(lines, line)) {
    const nlohmann::json event = nlohmann::json::parse(line);  // every line is an event
    const std::string kind = event["event"];
    if (kinds.empty() || kinds.back() != kind) kinds.push_back(kind);
    if (kind == "image") {
      ++images;
      CHECK(event["status"] == "ok");
      CHECK(fs::exists(event["path"].get<std::string>()));
    }
    if (kind == "step") ++steps;
    if (kind == "done") done = event;
  }
  REQUIRE_FALSE(kinds.empty());
  CHECK(kinds.front() == "start");
  CHECK(kinds.back() == "done");
  CHECK(images == 5);
  CHECK(steps == 3 * 2);  // three batches of two steps
  CHECK(std::find(kinds.begin(), kinds.end(), "batch") != kinds.end());
  CHECK(std::find(kinds.begin(), kinds.end(), "stage") != kinds.end());
  CHECK(done["rendered"] == 5);
  CHECK(done["exit_code"] == 0);
  CHECK(done["images_per_hour"].get<double>() > 0.0);
}

TEST_CASE("the end of a job says images per hour, time and peak memory per stage", "[cli][progress]") {
  TempDir dir;
  const CommandResult r = fluxbatch::test::run_command(command(dir, render_args(dir)));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("summary: 5 image(s) in "));
  CHECK_THAT(r.output, ContainsSubstring(" images/hour; time per stage: load "));
  CHECK_THAT(r.output, ContainsSubstring(" denoise "));
  CHECK_THAT(r.output, ContainsSubstring(" write "));
  CHECK_THAT(r.output, ContainsSubstring("on 2 thread(s)"));
  CHECK_THAT(r.output, ContainsSubstring("memory: denoise peak"));

  const nlohmann::json s = last_manifest_line(dir / "out" / fluxbatch::io::kManifestFileName);
  CHECK(s["event"] == "summary");
  CHECK(s["images_per_hour"].get<double>() > 0.0);
  CHECK(s["wall_s"].get<double>() > 0.0);
  CHECK(s["write"]["threads"] == 2);
  std::vector<std::string> stages;
  double total = 0.0;
  for (const auto& st : s["stages"]) {
    stages.push_back(st["stage"]);
    total += st["seconds"].get<double>();
    if (st["stage"] == "denoise" || st["stage"] == "decode" || st["stage"] == "encode" || st["stage"] == "load") {
      CHECK(st["peak_allocated_bytes"].get<int64_t>() > 0);
    }
  }
  for (const char* stage : {"load", "calibrate", "encode", "denoise", "decode", "write"}) {
    CHECK(std::find(stages.begin(), stages.end(), stage) != stages.end());
  }
  // The stages (write aside: it overlaps the others) add up to the wall time.
  CHECK(total - s["write"]["seconds"].get<double>() <= s["wall_s"].get<double>() + 0.01);
}
