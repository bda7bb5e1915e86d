// `fluxbatch render` with LoRAs, as a user runs it: job-file "loras" and --lora, what the PNGs and the
// manifest record, resume and the image cache telling LoRAs apart, errors before any model loads, and
// `inspect` on a LoRA file.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/io/png_writer.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::fluxbatch_cmd;
using fluxbatch::test::quote;
using fluxbatch::test::TempDir;

namespace {

fs::path lora(const std::string& name) {
  return fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "loras" / name);
}

std::string png_text(const fs::path& png, const std::string& key) {
  for (const auto& t : fluxbatch::io::read_png_text(fluxbatch::test::read_file(png))) {
    if (t.key == key) return t.text;
  }
  return "";
}

// Item 0: the defaults' LoRA (relative to the job file); item 1: two of its own; item 2: none.
fs::path write_job(const fs::path& dir, double scale) {
  fs::create_directories(dir / "styles");
  fs::copy_file(lora("peft_a.safetensors"), dir / "styles" / "ink.safetensors", fs::copy_options::skip_existing);
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(
      path, R"({
  "output": {"dir": "out", "name": "{index:02}"},
  "defaults": {"width": 64, "height": 64, "steps": 2, "seed": 3, "max_sequence_length": 32,
               "loras": [{"path": "styles/ink.safetensors", "scale": )" +
                std::to_string(scale) + R"(}]},
  "items": [
    "a lighthouse at night",
    {"prompt": "a red fox", "loras": [{"path": ")" + lora("kohya.safetensors").string() + R"(", "scale": 0.5},
                                      ")" + lora("xlabs.safetensors").string() + R"("]},
    {"prompt": "a harbour", "loras": []}
  ]
})");
  return path;
}

std::string render(const fs::path& job, const std::string& extra = "") {
  const auto r = fluxbatch_cmd("render " + quote(job) + " --model " + quote(fluxbatch::test::tiny_model()) +
                               " --device cpu --batch 3 " + extra + " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return r.output;
}

}  // namespace

TEST_CASE("render with LoRAs records them in the PNG and the manifest, and resume tells scales apart", "[cli]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 0.8);
  const std::string first = render(job);
  CHECK_THAT(first, ContainsSubstring("3 LoRA file(s) read and checked"));
  CHECK_THAT(first, ContainsSubstring("Kohya/ComfyUI, rank 4"));

  const std::string params = png_text(dir / "out" / "00.png", "parameters");
  CHECK_THAT(params, ContainsSubstring("a lighthouse at night <lora:ink:0.8>\nSteps: 2"));
  CHECK_THAT(params, ContainsSubstring("Lora hashes: \"ink: "));
  const std::string two = png_text(dir / "out" / "01.png", "parameters");
  CHECK_THAT(two, ContainsSubstring("a red fox <lora:kohya:0.5> <lora:xlabs:1>"));
  CHECK_THAT(png_text(dir / "out" / "01.png", "fluxbatch"), ContainsSubstring("\"sha256\":\""));
  CHECK_THAT(png_text(dir / "out" / "02.png", "parameters"), !ContainsSubstring("lora"));

  const auto manifest = fluxbatch::io::read_manifest((dir / "out" / "manifest.jsonl").string());
  REQUIRE(manifest.entries.size() == 3);
  for (const auto& e : manifest.entries) {
    if (e.file == "00.png") {
      REQUIRE(e.loras.size() == 1);
      CHECK_THAT(e.loras[0].path, ContainsSubstring("styles/ink.safetensors"));
      CHECK(e.loras[0].scale == 0.8);
      CHECK(e.loras[0].sha256.size() == 64);
    }
    if (e.file == "01.png") CHECK(e.loras.size() == 2);
    if (e.file == "02.png") CHECK(e.loras.empty());
  }
  // The images differ from the same seeds and prompts without LoRAs.
  const std::string with = fluxbatch::test::read_file(dir / "out" / "00.png");

  CHECK_THAT(render(job), ContainsSubstring("0 image(s) to render, 3 finished earlier"));
  write_job(dir.path(), 0.5);  // another scale: item 0 (the defaults' LoRA) is another image, not finished
  const auto changed = fluxbatch_cmd("render " + quote(job) + " --model " + quote(fluxbatch::test::tiny_model()) +
                                     " --device cpu --batch 3 2>&1");
  INFO(changed.output);
  CHECK(changed.exit_code == 1);
  CHECK_THAT(changed.output, ContainsSubstring("0 image(s) to render, 2 finished earlier, 1 blocked"));
  CHECK_THAT(render(job, "--overwrite"), ContainsSubstring("3 image(s) to render"));
  CHECK(fluxbatch::test::read_file(dir / "out" / "00.png") != with);
}

TEST_CASE("a LoRA that is missing or does not fit stops render before the model loads (exit 2)", "[cli]") {
  TempDir dir;
  fluxbatch::test::write_file(dir / "job.json", R"({
  "output": {"dir": "out"},
  "defaults": {"width": 64, "height": 64, "steps": 2},
  "items": [{"prompt": "a", "loras": ["missing.safetensors"]},
            {"prompt": "b", "loras": [")" + lora("foreign.safetensors").string() + R"("]}]
})");
  const auto r = fluxbatch_cmd("render " + quote(dir / "job.json") + " --model " +
                               quote(fluxbatch::test::tiny_model()) + " --device cpu 2>&1");
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, ContainsSubstring("job.json:4:39 items[0].loras[0]: "));
  CHECK_THAT(r.output, ContainsSubstring("missing.safetensors: no such file"));
  CHECK_THAT(r.output, ContainsSubstring("items[1].loras[0]: "));
  CHECK_THAT(r.output, ContainsSubstring("lora_magnitude_vector"));
  CHECK_THAT(r.output, !ContainsSubstring("loaded"));
  CHECK_FALSE(fs::exists(dir / "out"));
}

TEST_CASE("prompt lists take --lora PATH:SCALE; the image cache keeps LoRA and plain images apart", "[cli]") {
  TempDir dir;
  fluxbatch::test::write_file(dir / "prompts.txt", "a green field\n");
  const std::string common = "render " + quote(dir / "prompts.txt") + " --model " +
                             quote(fluxbatch::test::tiny_model()) +
                             " --device cpu --width 64 --height 64 --steps 2 --max-sequence-length 32 --name x --cache " +
                             quote(dir / "cache");
  auto r = fluxbatch_cmd(common + " --out " + quote(dir / "a") + " --lora " + quote(lora("peft_b.safetensors").string() + ":0.5") + " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(png_text(dir / "a" / "x.png", "parameters"), ContainsSubstring("a green field <lora:peft_b:0.5>"));
  r = fluxbatch_cmd(common + " --out " + quote(dir / "b") + " 2>&1");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("image cache: 0 of 1 image(s) found"));
  CHECK(fluxbatch::test::read_file(dir / "a" / "x.png") != fluxbatch::test::read_file(dir / "b" / "x.png"));
  r = fluxbatch_cmd(common + " --out " + quote(dir / "c") + " --lora " + quote(lora("peft_b.safetensors").string() + ":0.5") + " 2>&1");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("image cache: 1 of 1 image(s) found"));
}

TEST_CASE("inspect on a LoRA file", "[cli]") {
  const auto r = fluxbatch_cmd("inspect " + quote(lora("kohya.safetensors")) + " 2>&1");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("kind: LoRA (Kohya/ComfyUI)"));
  CHECK_THAT(r.output, ContainsSubstring("rank: 4"));
  CHECK_THAT(r.output, ContainsSubstring("transformer_blocks.*.attn.to_q"));
}
