#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/png_writer.h"
#include "test_support.h"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::PngText;

namespace {

struct TestImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

TestImage gradient(int width, int height) {
  TestImage img{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &img.rgb[(size_t(y) * width + x) * 3];
      p[0] = uint8_t(x * 7 + y);
      p[1] = uint8_t(y * 13);
      p[2] = uint8_t((x ^ y) * 3);
    }
  }
  return img;
}

std::vector<uint8_t> decode(const std::string& png, int& w, int& h) {
  int channels = 0;
  unsigned char* px = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()),
                                            static_cast<int>(png.size()), &w, &h, &channels, 3);
  REQUIRE(px != nullptr);
  std::vector<uint8_t> out(px, px + size_t(w) * h * 3);
  stbi_image_free(px);
  return out;
}

}  // namespace

TEST_CASE("crc32 matches the standard check value", "[io]") {
  CHECK(fluxbatch::io::crc32("123456789") == 0xCBF43926U);
  CHECK(fluxbatch::io::crc32("") == 0U);
  CHECK(fluxbatch::io::crc32("IEND") == 0xAE426082U);  // the CRC every PNG ends with
}

TEST_CASE("PNG round trip keeps pixels and text chunks", "[io]") {
  fluxbatch::test::TempDir dir;
  const TestImage img = gradient(37, 21);
  const std::vector<PngText> text = {
      {"parameters", "a red fox\nSteps: 28, Sampler: Euler"},
      {"fluxbatch", R"({"index":3,"prompt":"a red fox"})"},
      {"unicode", "caf\xc3\xa9 \xe2\x98\x95 \xe5\xaf\xbf\xe5\x8f\xb8"},
  };
  const auto path = (dir / "out.png").string();
  fluxbatch::io::write_png_atomic(path, img, text);

  const std::string bytes = fluxbatch::test::read_file(path);
  int w = 0, h = 0;
  CHECK(decode(bytes, w, h) == img.rgb);
  CHECK(w == 37);
  CHECK(h == 21);

  const std::vector<PngText> back = fluxbatch::io::read_png_text(bytes);
  REQUIRE(back.size() == 3);
  for (size_t i = 0; i < text.size(); ++i) {
    CHECK(back[i].key == text[i].key);
    CHECK(back[i].text == text[i].text);
  }
  // Chunks sit right after IHDR (byte 33); ASCII as tEXt, UTF-8 as iTXt.
  CHECK(bytes.substr(37, 4) == "tEXt");
  CHECK(bytes.find("iTXtunicode") != std::string::npos);
  CHECK(bytes.find("tEXtunicode") == std::string::npos);
}

TEST_CASE("encode_png rejects mismatched buffers and bad keys", "[io]") {
  const TestImage img = gradient(4, 4);
  CHECK_THROWS_AS(fluxbatch::io::encode_png(5, 4, img.rgb, {}), fluxbatch::OutputError);
  CHECK_THROWS_AS(fluxbatch::io::encode_png(4, 4, img.rgb, {{"", "x"}}), fluxbatch::OutputError);
  CHECK_THROWS_AS(fluxbatch::io::encode_png(4, 4, img.rgb, {{std::string(80, 'k'), "x"}}), fluxbatch::OutputError);
  CHECK_THROWS_AS(fluxbatch::io::encode_png(4, 4, img.rgb, {{"k", std::string("a\0b", 3)}}),
                  fluxbatch::OutputError);
}

TEST_CASE("read_png_text detects corruption", "[io]") {
  const TestImage img = gradient(8, 8);
  std::string png = fluxbatch::io::encode_png(8, 8, img.rgb, {{"k", "value"}});
  CHECK_THROWS_AS(fluxbatch::io::read_png_text(png.substr(0, png.size() - 5)), fluxbatch::InputError);
  png[45] ^= 0x01;  // inside the tEXt data
  CHECK_THROWS_WITH(fluxbatch::io::read_png_text(png), ContainsSubstring("bad CRC"));
  CHECK_THROWS_AS(fluxbatch::io::read_png_text("GIF89a"), fluxbatch::InputError);
}

TEST_CASE("write_png_atomic failure names the path and leaves nothing", "[io]") {
  fluxbatch::test::TempDir dir;
  const TestImage img = gradient(4, 4);
  const auto path = (dir / "missing" / "x.png").string();
  CHECK_THROWS_WITH(fluxbatch::io::write_png_atomic(path, img, {}), ContainsSubstring(path));
  const auto bad = (dir / "bad.png").string();
  CHECK_THROWS_WITH(fluxbatch::io::write_png_atomic(bad, 3, 3, img.rgb, {}), ContainsSubstring(bad));
  CHECK(fs::is_empty(dir.path()));
}

TEST_CASE("a1111_parameters matches Forge's FLUX infotext", "[io]") {
  fluxbatch::io::InfotextParams p;
  p.prompt = "a lighthouse at dusk";
  p.steps = 28;
  p.guidance = 3.5;
  p.seed = 42;
  p.width = 1024;
  p.height = 768;
  p.model = "FLUX.1-dev";
  CHECK(fluxbatch::io::a1111_parameters(p) ==
        "a lighthouse at dusk\nSteps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
        "Distilled CFG Scale: 3.5, Seed: 42, Size: 1024x768, Model: FLUX.1-dev, Version: fluxbatch " FLUXBATCH_VERSION);
  p.guidance = 4.0;
  p.seed = 18446744073709551615ULL;
  p.model = "flux, dev: nf4";
  const std::string text = fluxbatch::io::a1111_parameters(p);
  CHECK_THAT(text, ContainsSubstring("Distilled CFG Scale: 4, "));
  CHECK_THAT(text, ContainsSubstring("Seed: 18446744073709551615, "));
  CHECK_THAT(text, ContainsSubstring("Model: \"flux, dev: nf4\", "));
  p.guidance = 0.1;
  CHECK_THAT(fluxbatch::io::a1111_parameters(p), ContainsSubstring("Distilled CFG Scale: 0.1, "));
}
