// A model folder saved by transformers 5 (tokenizer.json only, scripts/make_layout_fixtures.py) renders
// exactly the images of the classic layout it was saved from.
#include <catch2/catch_test_macros.hpp>

#include <filesystem>
#include <set>
#include <string>

#include "cli_support.h"
#include "fluxbatch/io/manifest.h"

namespace fs = std::filesystem;
using fluxbatch::test::quote;
using fluxbatch::test::TempDir;

namespace {

std::set<std::string> pngs(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".png") out.insert(e.path().filename().string());
  }
  return out;
}

}  // namespace

TEST_CASE("a transformers 5 folder (tokenizer.json only) renders the classic layout's images byte for byte",
          "[cli][layouts]") {
  const fs::path tf5 = fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev-tf5");
  REQUIRE_FALSE(fs::exists(tf5 / "tokenizer" / "vocab.json"));
  REQUIRE_FALSE(fs::exists(tf5 / "tokenizer_2" / "spiece.model"));
  TempDir dir;
  const fs::path job = dir / "job.json";
  // Prompts that exercise both tokenizers: accents, case, punctuation, a sentinel, a long one for CLIP.
  fluxbatch::test::write_file(job, R"({
  "output": {"dir": "out", "name": "{index:02}-{seed}"},
  "defaults": {"width": 64, "height": 64, "steps": 2, "max_sequence_length": 64},
  "items": [
    {"prompt": "A PHOTO of a Café, naïve crème brûlée!", "seed": 3},
    {"prompt": "a lighthouse <extra_id_3> at night, 8k, trending on artstation, highly detailed, volumetric light, by several painters, with reflections in the pools below and a lone traveler", "seed": 4}
  ]
})");
  const auto classic = fluxbatch::test::fluxbatch_cmd("render " + quote(job) + " --model " +
                                                      quote(fluxbatch::test::tiny_model()) + " --device cpu 2>&1");
  INFO(classic.output);
  REQUIRE(classic.exit_code == 0);
  fs::rename(dir / "out", dir / "classic");
  const auto saved = fluxbatch::test::fluxbatch_cmd("render " + quote(job) + " --model " + quote(tf5) +
                                                    " --device cpu 2>&1");
  INFO(saved.output);
  REQUIRE(saved.exit_code == 0);
  const std::set<std::string> files = pngs(dir / "classic");
  REQUIRE(files.size() == 2);
  CHECK(pngs(dir / "out") == files);
  for (const std::string& name : files) {
    INFO(name);
    CHECK(fluxbatch::test::read_file(dir / "out" / name) == fluxbatch::test::read_file(dir / "classic" / name));
  }
}
