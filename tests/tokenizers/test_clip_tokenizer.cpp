#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <catch2/matchers/catch_matchers.hpp>

#include "fluxbatch/core/error.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "golden_tokens.h"
#include "test_support.h"

using fluxbatch::tokenizers::ClipTokenizer;
using Catch::Matchers::ContainsSubstring;

namespace {

const ClipTokenizer& tiny_clip() {
  static const ClipTokenizer tokenizer(fluxbatch::test::tiny_tokenizer_dir("tokenizer"));
  return tokenizer;
}

}  // namespace

TEST_CASE("CLIP tokenizer reproduces transformers' CLIPTokenizer on every golden text", "[tokenizers]") {
  const auto cases = fluxbatch::test::load_golden_tokens("clip");
  REQUIRE(cases.size() > 60);
  for (const auto& c : cases) {
    INFO("text: " << c.text);
    const auto result = tiny_clip().encode(c.text, 77);
    CHECK(result.ids == c.ids);
  }
}

TEST_CASE("CLIP tokenizer uses the real CLIP-L vocabulary and special ids", "[tokenizers]") {
  const ClipTokenizer& tok = tiny_clip();
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.bos_id() == 49406);
  CHECK(tok.eos_id() == 49407);
  CHECK(tok.pad_id() == 49407);
  CHECK(tok.tokenize("a photo of a cat") == std::vector<std::int64_t>{320, 1125, 539, 320, 2368});
  const auto empty = tok.encode("");
  REQUIRE(empty.ids.size() == 77);
  CHECK(empty.ids[0] == 49406);
  CHECK(empty.ids[1] == 49407);
  CHECK_FALSE(empty.truncated);
}

TEST_CASE("CLIP tokenizer truncates to BOS + 75 + EOS and says so", "[tokenizers]") {
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "cat ";
  const auto result = tiny_clip().encode(long_text);
  REQUIRE(result.ids.size() == 77);
  CHECK(result.truncated);
  CHECK(result.ids.front() == 49406);
  CHECK(result.ids[75] == 2368);
  CHECK(result.ids.back() == 49407);
  // exactly 75 content tokens still fit
  std::string fits;
  for (int i = 0; i < 75; ++i) fits += "cat ";
  CHECK_FALSE(tiny_clip().encode(fits).truncated);
  fits += "cat";
  CHECK(tiny_clip().encode(fits).truncated);
  CHECK(tiny_clip().encode("a cat", 4).ids == std::vector<std::int64_t>{49406, 320, 2368, 49407});
  CHECK(tiny_clip().encode("a cat", 3).truncated);
}

TEST_CASE("CLIP tokenizer rejects invalid UTF-8 and a max_length without room for BOS/EOS", "[tokenizers]") {
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::InputError>([&] { tiny_clip().encode("bad \xC3\x28 byte"); }),
             ContainsSubstring("UTF-8"));
  CHECK_THROWS_AS(tiny_clip().encode("a", 1), fluxbatch::InputError);
}

TEST_CASE("CLIP tokenizer reports missing or corrupt files by name", "[tokenizers]") {
  fluxbatch::test::TempDir dir;
  const auto source = fluxbatch::test::tiny_tokenizer_dir("tokenizer");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { ClipTokenizer t(dir.path()); }),
             ContainsSubstring("vocab.json"));

  std::filesystem::copy_file(source / "vocab.json", dir / "vocab.json");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { ClipTokenizer t(dir.path()); }),
             ContainsSubstring("merges.txt"));

  fluxbatch::test::write_file(dir / "merges.txt", "#version: 0.2\nt h\nnot_a_merge\n");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { ClipTokenizer t(dir.path()); }),
             ContainsSubstring("merges.txt line 3"));

  fluxbatch::test::write_file(dir / "vocab.json", "{\"a\": 1,");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { ClipTokenizer t(dir.path()); }),
             ContainsSubstring("vocab.json"));

  fluxbatch::test::write_file(dir / "vocab.json", "{\"a\": 0, \"b\": 1}");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { ClipTokenizer t(dir.path()); }),
             ContainsSubstring("<|startoftext|>"));
}
