// Runs build/fluxbatch as a user would: help, version, validate, render --dry-run, exit codes.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "fluxbatch/io/manifest.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::fluxbatch_cmd;
using fluxbatch::test::quote;

namespace {

// A two-item job (3 images) writing into <dir>/out.
fs::path write_job(const TempDir& dir, const std::string& name = "job.json") {
  const fs::path path = dir / name;
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": "out", "name": "{index:03}-{slug}-{seed}"},
  "defaults": {"width": 256, "height": 256, "steps": 4, "seed": 10},
  "items": [
    "a lighthouse at night",
    {"prompt": "a red fox in the snow", "count": 2, "seed": 7}
  ]
})");
  return path;
}

fs::path write_bad_job(const TempDir& dir, const std::string& name, const std::string& bad_field) {
  const fs::path path = dir / name;
  fluxbatch::test::write_file(path, "{\n  \"items\": [\n    {\"prompt\": \"cat\", " + bad_field + "}\n  ]\n}\n");
  return path;
}

}  // namespace

TEST_CASE("help lists the subcommands, examples and exit codes", "[cli]") {
  const CommandResult r = fluxbatch_cmd("--help");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("validate"));
  CHECK_THAT(r.output, ContainsSubstring("render"));
  CHECK_THAT(r.output, ContainsSubstring("--verbose"));
  CHECK_THAT(r.output, ContainsSubstring("Examples:"));
  CHECK_THAT(r.output, ContainsSubstring("130  interrupted"));
}

TEST_CASE("each subcommand's --help teaches its options with examples", "[cli]") {
  const CommandResult render = fluxbatch_cmd("render --help");
  CHECK(render.exit_code == 0);
  for (const char* text : {"--model", "--out", "--device", "--dtype", "--batch", "--overwrite", "--dry-run",
                           "--width", "--height", "--steps", "--guidance", "--seed", "--count",
                           "--max-sequence-length", "Examples:", "Resuming"}) {
    CHECK_THAT(render.output, ContainsSubstring(text));
  }
  const CommandResult validate = fluxbatch_cmd("validate --help");
  CHECK(validate.exit_code == 0);
  CHECK_THAT(validate.output, ContainsSubstring("--json"));
  CHECK_THAT(validate.output, ContainsSubstring("fluxbatch validate jobs/night.json"));
}

TEST_CASE("the version flag prints the version", "[cli]") {
  const CommandResult r = fluxbatch_cmd("--version");
  CHECK(r.exit_code == 0);
  CHECK(r.output == "fluxbatch " FLUXBATCH_VERSION "\n");
}

TEST_CASE("command-line errors exit 2 with CLI11's message", "[cli]") {
  CHECK(fluxbatch_cmd("").exit_code == 2);
  const CommandResult unknown = fluxbatch_cmd("render --bogus x.json");
  CHECK(unknown.exit_code == 2);
  CHECK_THAT(unknown.output, ContainsSubstring("--bogus"));
  const CommandResult range = fluxbatch_cmd("render x.json --steps 0");
  CHECK(range.exit_code == 2);
  CHECK_THAT(range.output, ContainsSubstring("--steps"));
  CHECK(fluxbatch_cmd("validate -v -q x.json").exit_code == 2);
  CHECK(fluxbatch_cmd("frobnicate").exit_code == 2);
}

TEST_CASE("validate accepts a good job and says what it expands to", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  const CommandResult r = fluxbatch_cmd("validate " + quote(job.string()));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("ok, 3 image(s) from 2 item(s)"));
  CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("validate --json prints the expanded render items", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  const CommandResult r = fluxbatch_cmd("validate --json " + quote(job.string()));
  REQUIRE(r.exit_code == 0);
  const auto json = nlohmann::json::parse(r.output);
  REQUIRE(json["items"].size() == 3);
  CHECK(json["items"][1]["prompt"] == "a red fox in the snow");
  CHECK(json["items"][2]["seed"] == 8);

  const CommandResult two = fluxbatch_cmd("validate --json " + quote(job.string()) + " " + quote(job.string()));
  REQUIRE(two.exit_code == 0);
  CHECK(nlohmann::json::parse(two.output).size() == 2);
}

TEST_CASE("validate lists every error of every file and exits 2", "[cli]") {
  TempDir dir;
  const fs::path good = write_job(dir);
  const fs::path bad1 = write_bad_job(dir, "bad1.json", "\"steps\": 0");
  const fs::path bad2 = write_bad_job(dir, "bad2.json", "\"width\": 1000, \"stpes\": 3");
  const CommandResult r =
      fluxbatch_cmd("validate " + quote(good.string()) + " " + quote(bad1.string()) + " " + quote(bad2.string()));
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, ContainsSubstring(good.string() + ": ok"));
  CHECK_THAT(r.output, ContainsSubstring("bad1.json:3"));
  CHECK_THAT(r.output, ContainsSubstring("steps"));
  CHECK_THAT(r.output, ContainsSubstring("bad2.json:3"));
  CHECK_THAT(r.output, ContainsSubstring("width"));
  CHECK_THAT(r.output, ContainsSubstring("stpes"));
  CHECK_THAT(r.output, ContainsSubstring("2 of 3 job file(s) invalid"));

  const CommandResult missing = fluxbatch_cmd("validate " + quote((dir / "nope.json").string()));
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.output, ContainsSubstring("nope.json"));
}

TEST_CASE("render --dry-run shows the plan and writes nothing", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  const CommandResult r = fluxbatch_cmd("render --dry-run --device cpu --batch 2 " + quote(job.string()));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("dry run:"));
  CHECK_THAT(r.output, ContainsSubstring("render   001-a-red-fox-in-the-snow-7.png"));
  CHECK_THAT(r.output, ContainsSubstring("would render 3 image(s) in 2 batch(es)"));
  CHECK_THAT(r.output, ContainsSubstring("none given"));
  CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("render --dry-run reports finished and blocked images from an earlier run", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  fs::create_directories(dir / "out");
  // Image 0 finished earlier (PNG + matching manifest line); image 1's file is someone else's.
  fluxbatch::test::write_file(dir / "out" / "000-a-lighthouse-at-night-10.png", "png");
  fluxbatch::test::write_file(dir / "out" / "001-a-red-fox-in-the-snow-7.png", "png");
  {
    fluxbatch::io::ManifestEntry e;
    e.prompt = "a lighthouse at night";
    e.seed = 10;
    e.width = e.height = 256;
    e.steps = 4;
    e.guidance = 3.5;
    e.max_sequence_length = 512;
    e.model = "whatever";
    e.file = "000-a-lighthouse-at-night-10.png";
    fluxbatch::io::ManifestWriter((dir / "out" / fluxbatch::io::kManifestFileName).string()).append(e);
  }
  const std::string manifest_before = fluxbatch::test::read_file(dir / "out" / fluxbatch::io::kManifestFileName);
  const CommandResult r = fluxbatch_cmd("render -n --device cpu " + quote(job.string()));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("skip     000-a-lighthouse-at-night-10.png"));
  CHECK_THAT(r.output, ContainsSubstring("blocked  001-a-red-fox-in-the-snow-7.png"));
  CHECK_THAT(r.output, ContainsSubstring("render   002-a-red-fox-in-the-snow-8.png"));
  CHECK_THAT(r.output, ContainsSubstring("would render 1 image(s)"));
  CHECK(fluxbatch::test::read_file(dir / "out" / fluxbatch::io::kManifestFileName) == manifest_before);

  const CommandResult all = fluxbatch_cmd("render -n --overwrite --device cpu " + quote(job.string()));
  CHECK_THAT(all.output, ContainsSubstring("would render 3 image(s)"));
}

TEST_CASE("render takes prompt-list defaults from the command line", "[cli]") {
  TempDir dir;
  fluxbatch::test::write_file(dir / "prompts.txt", "a cat\n# comment\na dog\n");
  const CommandResult r = fluxbatch_cmd("render -n --device cpu --steps 9 --width 320 --count 2 --seed 5 --out " +
                                        quote((dir / "o").string()) + " " + quote((dir / "prompts.txt").string()));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("320x1024, 9 steps"));
  CHECK_THAT(r.output, ContainsSubstring("seed 6"));
  CHECK_THAT(r.output, ContainsSubstring("would render 4 image(s)"));
  CHECK_THAT(r.output, ContainsSubstring(" -> " + (dir / "o").string()));
}

TEST_CASE("render input errors exit 2 and write nothing", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  const CommandResult no_model = fluxbatch_cmd("render --device cpu " + quote(job.string()));
  CHECK(no_model.exit_code == 2);
  CHECK_THAT(no_model.output, ContainsSubstring("no model"));
  const CommandResult batch = fluxbatch_cmd("render -n --device cpu --batch 0 " + quote(job.string()));
  CHECK(batch.exit_code == 2);
  CHECK_THAT(batch.output, ContainsSubstring("--batch"));
  const CommandResult device = fluxbatch_cmd("render -n --device tpu " + quote(job.string()));
  CHECK(device.exit_code == 2);
  CHECK_THAT(device.output, ContainsSubstring("--device"));
  const CommandResult dtype = fluxbatch_cmd("render -n --device cpu --dtype fp8 " + quote(job.string()));
  CHECK(dtype.exit_code == 2);
  CHECK_THAT(dtype.output, ContainsSubstring("--dtype"));
  const CommandResult bad_job =
      fluxbatch_cmd("render --model x " + quote(write_bad_job(dir, "bad.json", "\"steps\": 0").string()));
  CHECK(bad_job.exit_code == 2);
  CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("render with a model that cannot be loaded exits 3 before writing", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir);
  const CommandResult r =
      fluxbatch_cmd("render --device cpu --model " + quote((dir / "no-such-model").string()) + " " + quote(job.string()));
  CHECK(r.exit_code == 3);
  CHECK_THAT(r.output, ContainsSubstring("no-such-model"));
  CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("inspect reports the tiny diffusers model and fails cleanly on a non-model", "[cli]") {
  const fs::path model =
      fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev");
  const CommandResult r = fluxbatch_cmd("inspect " + quote(model.string()));
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("dev"));
  CHECK_THAT(r.output, ContainsSubstring("transformer"));
  CHECK_THAT(r.output, ContainsSubstring("text_encoder_2"));

  const CommandResult j = fluxbatch_cmd("inspect --json " + quote(model.string()));
  REQUIRE(j.exit_code == 0);
  const auto doc = nlohmann::json::parse(j.output);
  CHECK(doc.is_object());

  TempDir dir;
  const CommandResult bad = fluxbatch_cmd("inspect " + quote(dir.path().string()));
  CHECK(bad.exit_code == 3);
  CHECK_THAT(bad.output, ContainsSubstring(dir.path().string()));
}
