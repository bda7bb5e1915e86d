// --vae-tiles as a user sees it: a render in exact tiles writes the untiled render's pixels (up to
// rounding), logs its choice, plan reports the decode, bad values are one clean line.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::fluxbatch_cmd;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

// One 144x112 image (18 x 14 latents: 64 px tiles leave partial tiles on both axes).
fs::path write_job(const TempDir& dir, const std::string& name) {
  const fs::path path = dir / (name + ".json");
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": ")" + (dir / name).string() + R"("},
  "defaults": {"width": 144, "height": 112, "steps": 2, "seed": 3, "max_sequence_length": 32},
  "items": [{"prompt": "a lighthouse on a cliff", "name": "img"}]
})");
  return path;
}

std::vector<unsigned char> pixels(const fs::path& png) {
  int width = 0, height = 0, channels = 0;
  unsigned char* data = stbi_load(png.string().c_str(), &width, &height, &channels, 3);
  REQUIRE(data != nullptr);
  std::vector<unsigned char> out(data, data + static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  stbi_image_free(data);
  CHECK(width == 144);
  CHECK(height == 112);
  return out;
}

size_t lines(const std::string& text) {
  size_t n = 0;
  for (size_t start = 0; start < text.size();) {
    const size_t end = text.find('\n', start);
    if (text.find_first_not_of(" \t\r", start) < std::min(end, text.size())) ++n;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return n;
}

}  // namespace

TEST_CASE("render --vae-tiles 64 writes the untiled render's pixels and logs the choice", "[cli][vae_tiles]") {
  TempDir dir;
  const std::string model = quote(tiny_model().string());
  const CommandResult whole =
      fluxbatch_cmd("render --device cpu --model " + model + " --vae-tiles off " + quote(write_job(dir, "whole")));
  INFO(whole.output);
  REQUIRE(whole.exit_code == 0);
  CHECK_THAT(whole.output, ContainsSubstring("VAE decode at 144x112 whole"));
  const CommandResult tiled =
      fluxbatch_cmd("render --device cpu --model " + model + " --vae-tiles 64 " + quote(write_job(dir, "tiled")));
  INFO(tiled.output);
  REQUIRE(tiled.exit_code == 0);
  CHECK_THAT(tiled.output, ContainsSubstring("VAE decode at 144x112 in 64 px tiles (exact"));
  CHECK_THAT(tiled.output, ContainsSubstring("(--vae-tiles 64)"));

  const std::vector<unsigned char> a = pixels(dir / "whole" / "img.png"), b = pixels(dir / "tiled" / "img.png");
  REQUIRE(a.size() == b.size());
  size_t within_one = 0;
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const int d = std::abs(int(a[i]) - int(b[i]));
    within_one += d <= 1;
    worst = std::max(worst, d);
  }
  INFO(within_one << " of " << a.size() << " values within one level, largest difference " << worst);
  CHECK(static_cast<double>(within_one) >= 0.999 * static_cast<double>(a.size()));
  CHECK(worst <= 2);
}

TEST_CASE("a bad --vae-tiles is one line and exit 2, for render and plan", "[cli][vae_tiles]") {
  TempDir dir;
  const std::string job = quote(write_job(dir, "job"));
  for (const std::string& command :
       std::vector<std::string>{"render -n --device cpu", "plan --device cpu --model " + quote(tiny_model())}) {
    const CommandResult r = fluxbatch_cmd(command + " --vae-tiles 100 " + job);
    INFO(command << ": " << r.output);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, ContainsSubstring("--vae-tiles: expected auto, off, on or a tile edge in pixels"));
    CHECK_THAT(r.output, ContainsSubstring("got '100'"));
    CHECK(lines(r.output) == 1);
  }
}

TEST_CASE("plan reports the VAE decode: whole by default, exact tiles on request", "[cli][vae_tiles][planner]") {
  TempDir dir;
  const std::string args = quote(write_job(dir, "job")) + " --device cpu --model " + quote(tiny_model()) +
                           " --vram-budget 8G --json";
  const CommandResult whole = fluxbatch_cmd("plan " + args);
  INFO(whole.output);
  REQUIRE(whole.exit_code == 0);
  const nlohmann::json a = nlohmann::json::parse(whole.output);
  CHECK(a["vae_tiles"] == "auto");
  CHECK(a["groups"][0]["decode"]["mode"] == "whole");
  CHECK(a["groups"][0]["decode"]["tile_pixels"].is_null());

  const CommandResult tiled = fluxbatch_cmd("plan " + args + " --vae-tiles 64");
  INFO(tiled.output);
  REQUIRE(tiled.exit_code == 0);
  const nlohmann::json b = nlohmann::json::parse(tiled.output);
  CHECK(b["vae_tiles"] == "64");
  const auto& decode = b["groups"][0]["decode"];
  CHECK(decode["mode"] == "tiles");
  CHECK(decode["tile_pixels"] == 64);
  CHECK(decode["feature_maps"] == "device");  // the CPU: no separate host memory
  CHECK(decode["peak_bytes"].get<int64_t>() > decode["activation_bytes"].get<int64_t>());
  // The decode stage of the group's plan carries the tiled prediction.
  for (const auto& stage : b["groups"][0]["stages"]) {
    if (stage["name"] == "decode") CHECK(stage["activation_bytes"] == decode["activation_bytes"]);
  }

  const CommandResult text = fluxbatch_cmd("plan " + quote(write_job(dir, "job")) + " --device cpu --model " +
                                           quote(tiny_model()) + " --vram-budget 8G --vae-tiles 64");
  INFO(text.output);
  CHECK_THAT(text.output, ContainsSubstring("VAE decode in 64 px tiles (exact, feature maps in device memory): "
                                            "predicted decode peak"));
}
