// `fluxbatch quantize` and `--quantize nf4` as a user runs them, and diffusers + bitsandbytes loading
// the result (scripts/check_nf4_diffusers.py in the project's venv).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
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


// One 64x64 image of "a photo of a cat", seed 0, 4 steps, in fp32 on the CPU; returns the PNG.
fs::path render(const TempDir& dir, const fs::path& model, const std::string& name, const std::string& extra = "") {
  const fs::path prompts = dir / "prompts.txt";
  if (!fs::exists(prompts)) fluxbatch::test::write_file(prompts, "a photo of a cat\n");
  const fs::path out = dir / name;
  const CommandResult r = fluxbatch_cmd("render -q --device cpu --width 64 --height 64 --steps 4 --seed 0 --model " +
                                        quote(model) + " --out " + quote(out) + " " + extra + " " + quote(prompts));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  for (const auto& e : fs::directory_iterator(out)) {
    if (e.path().extension() == ".png") return e.path();
  }
  FAIL("no PNG in " << out);
  return {};
}

// The concatenated IDAT data of a PNG: the pixels as fluxbatch's encoder compressed them, without
// the text chunks (which name the model path).
std::string pixel_data(const fs::path& png) {
  const std::string bytes = fluxbatch::test::read_file(png);
  std::string idat;
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[pos + i])); };
    const uint32_t length = (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
    if (bytes.compare(pos + 4, 4, "IDAT") == 0) idat += bytes.substr(pos + 8, length);
    pos += 12 + length;
  }
  return idat;
}

}  // namespace

TEST_CASE("quantize --help teaches its options", "[cli][quantize]") {
  const CommandResult r = fluxbatch_cmd("quantize --help");
  CHECK(r.exit_code == 0);
  for (const char* text : {"IN", "OUT", "--to", "nf4|fp8", "--double-quant", "--device", "--overwrite", "Examples:",
                           "--to fp8"}) {
    CHECK_THAT(r.output, ContainsSubstring(text));
  }
  CHECK_THAT(fluxbatch_cmd("render --help").output, ContainsSubstring("--quantize"));
  CHECK_THAT(fluxbatch_cmd("plan --help").output, ContainsSubstring("--quantize"));
  CHECK(fluxbatch_cmd("render --quantize int8 x.txt").exit_code == 2);
}

TEST_CASE("quantize writes an NF4 folder that inspect reports, and never clobbers it", "[cli][quantize]") {
  TempDir dir;
  const bool dq = GENERATE(false, true);
  const std::string out = (dir / "nf4").string();
  const CommandResult r = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(out) + (dq ? " --double-quant" : ""));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("50 Linear weights in NF4"));

  const CommandResult again = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(out));
  CHECK(again.exit_code == 3);
  CHECK_THAT(again.output, ContainsSubstring("already exists; pass --overwrite"));
  CHECK(fluxbatch_cmd("quantize --overwrite " + quote(tiny_model()) + " " + quote(out) + (dq ? " --double-quant" : ""))
            .exit_code == 0);

  const CommandResult inspect = fluxbatch_cmd("inspect --json " + quote(out));
  REQUIRE(inspect.exit_code == 0);
  const auto doc = nlohmann::json::parse(inspect.output);
  const auto& t = doc["components"]["transformer"];
  CHECK(t["quantization"] == "bnb-nf4");
  CHECK(t["format"] == (dq ? "nf4-dq" : "nf4"));
  CHECK(t["dense_dtype"] == "bf16");
  CHECK(doc["components"]["text_encoder_2"]["format"] == "dense");
  const auto dense = nlohmann::json::parse(fluxbatch_cmd("inspect --json " + quote(tiny_model())).output);
  CHECK(t["parameters"] == dense["components"]["transformer"]["parameters"]);
  // Double quantization saves only on large tensors: on this tiny model its 1 KiB nested_quant_map per
  // Linear outweighs the weights.
  CHECK(t["bytes"].get<int64_t>() * (dq ? 1 : 3) < dense["components"]["transformer"]["bytes"].get<int64_t>() * (dq ? 2 : 1));
  CHECK_THAT(fluxbatch_cmd("inspect " + quote(out)).output,
             ContainsSubstring(dq ? "quantization: bnb-nf4 (nf4-dq: double-quantized" : "quantization: bnb-nf4 (nf4;"));
}

TEST_CASE("quantize --to fp8 writes a scaled-fp8 file that renders from a single-files folder; wrong uses are one line",
          "[cli][quantize][fp8file]") {
  TempDir dir;
  const fs::path bfl = fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev-bfl");
  const fs::path single = dir / "single";
  fs::create_directory(single);
  for (const char* f : {"ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors", "tokenizer", "tokenizer_2"}) {
    fs::create_symlink(bfl / f, single / f);
  }
  const fs::path out = single / "flux1-dev-fp8-scaled.safetensors";
  const CommandResult r = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(out) + " --to fp8");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("Linear weights in scaled fp8"));
  CHECK_THAT(fluxbatch_cmd("inspect " + quote(single)).output, ContainsSubstring("scaled-fp8 fp8-e4m3"));
  render(dir, single, "out_fp8");

  const CommandResult again = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(out) + " --to fp8");
  CHECK(again.exit_code == 3);
  CHECK_THAT(again.output, ContainsSubstring("already exists; pass --overwrite"));
  const CommandResult dq = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(dir / "x.safetensors") +
                                         " --to fp8 --double-quant");
  CHECK(dq.exit_code == 2);
  CHECK_THAT(dq.output, ContainsSubstring("--double-quant applies to --to nf4 only"));
  const CommandResult folder = fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(dir / "fp8dir") + " --to fp8");
  CHECK(folder.exit_code == 3);
  CHECK_THAT(folder.output, ContainsSubstring("name OUT <something>.safetensors"));
  CHECK(fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(dir / "y") + " --to int4").exit_code == 2);
}

TEST_CASE("render --quantize nf4 reaches the pipeline: the quantized folder renders the same pixels",
          "[cli][quantize]") {
  TempDir dir;
  const fs::path nf4 = dir / "nf4";
  REQUIRE(fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(nf4)).exit_code == 0);
  const std::string dense = pixel_data(render(dir, tiny_model(), "dense"));
  const std::string on_load = pixel_data(render(dir, tiny_model(), "on-load", "--quantize nf4"));
  // The folder holds the transformer quantized as --quantize nf4 does it; T5 is quantized on load in both.
  const std::string folder = pixel_data(render(dir, nf4, "folder", "--quantize nf4"));
  const std::string folder_t5_dense = pixel_data(render(dir, nf4, "folder-dense-t5"));
  CHECK_FALSE(dense.empty());
  CHECK(on_load == folder);
  CHECK(on_load != dense);
  CHECK(folder_t5_dense != folder);  // --quantize nf4 quantized T5 as well
}

TEST_CASE("diffusers + bitsandbytes load the quantized folder and render fluxbatch's image", "[cli][quantize]") {
  const fs::path python =
      fluxbatch::test::require_generated(fs::path(FLUXBATCH_SOURCE_DIR) / ".venv" / "bin" / "python3");
  const fs::path script = fs::path(FLUXBATCH_SOURCE_DIR) / "scripts" / "check_nf4_diffusers.py";
  TempDir dir;
  const bool dq = GENERATE(false, true);
  const fs::path nf4 = dir / "nf4";
  REQUIRE(fluxbatch_cmd("quantize " + quote(tiny_model()) + " " + quote(nf4) + (dq ? " --double-quant" : "")).exit_code == 0);
  const fs::path png = render(dir, nf4, "out");
  const CommandResult r = fluxbatch::test::run_command(
      quote(python) + " " + quote(script) + " " + quote(nf4) + " --png " + quote(png) +
      " --prompt 'a photo of a cat' --seed 0 --width 64 --height 64 --steps 4 --guidance 3.5 --tolerance 1");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("diffusers loaded 50 bitsandbytes Linear4bit"));
  CHECK_THAT(r.output, ContainsSubstring("OK"));
}
