#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <catch2/matchers/catch_matchers.hpp>

#include "fluxbatch/core/error.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"
#include "golden_tokens.h"
#include "test_support.h"

using fluxbatch::tokenizers::T5Tokenizer;
using Catch::Matchers::ContainsSubstring;

namespace {

const T5Tokenizer& tiny_t5() {
  static const T5Tokenizer tokenizer(fluxbatch::test::tiny_tokenizer_dir("tokenizer_2"));
  return tokenizer;
}

}  // namespace

TEST_CASE("T5 tokenizer reproduces transformers' T5TokenizerFast on every golden text", "[tokenizers]") {
  const auto cases = fluxbatch::test::load_golden_tokens("t5");
  REQUIRE(cases.size() > 60);
  for (const auto& c : cases) {
    INFO("text: " << c.text << "  max_length: " << c.max_length);
    const auto result = tiny_t5().encode(c.text, c.max_length);
    CHECK(result.ids == c.ids);
  }
}

TEST_CASE("T5 tokenizer ids: </s> 1, <pad> 0, extra ids above the SentencePiece vocabulary", "[tokenizers]") {
  const T5Tokenizer& tok = tiny_t5();
  CHECK(tok.eos_id() == 1);
  CHECK(tok.pad_id() == 0);
  CHECK(tok.unk_id() == 2);
  CHECK(tok.vocab_size() == 1100);
  CHECK(tok.tokenize("<extra_id_0>") == std::vector<std::int64_t>{1099});
  CHECK(tok.tokenize("<extra_id_99>") == std::vector<std::int64_t>{1000});
  CHECK(tok.tokenize("<extra_id_100>") != std::vector<std::int64_t>{999});  // not a sentinel: plain text
  const auto empty = tok.encode("", 8);
  CHECK(empty.ids == std::vector<std::int64_t>{1, 0, 0, 0, 0, 0, 0, 0});
  CHECK_FALSE(empty.truncated);
}

TEST_CASE("T5 tokenizer truncates to max_length-1 tokens + </s> and says so", "[tokenizers]") {
  const T5Tokenizer& tok = tiny_t5();
  const auto content = tok.tokenize("a photo of a cat");
  REQUIRE(content.size() == 5);
  const auto exact = tok.encode("a photo of a cat", 6);
  CHECK_FALSE(exact.truncated);
  CHECK(exact.ids.back() == 1);
  const auto cut = tok.encode("a photo of a cat", 5);
  CHECK(cut.truncated);
  CHECK(cut.ids == std::vector<std::int64_t>{content[0], content[1], content[2], content[3], 1});
  CHECK_THROWS_AS(tok.encode("a", 0), fluxbatch::InputError);
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::InputError>([&] { tok.encode("bad \xFF byte", 16); }),
             ContainsSubstring("UTF-8"));
}

TEST_CASE("T5 tokenizer reports a missing or corrupt spiece.model by name", "[tokenizers]") {
  fluxbatch::test::TempDir dir;
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { T5Tokenizer t(dir.path()); }),
             ContainsSubstring("spiece.model"));
  fluxbatch::test::write_file(dir / "spiece.model", "this is not a protobuf");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { T5Tokenizer t(dir.path()); }),
             ContainsSubstring("spiece.model"));

  const auto source = fluxbatch::test::tiny_tokenizer_dir("tokenizer_2");
  std::filesystem::copy_file(source / "spiece.model", dir / "spiece.model",
                             std::filesystem::copy_options::overwrite_existing);
  fluxbatch::test::write_file(dir / "tokenizer_config.json", "{\"extra_ids\": \"many\"}");
  CHECK_THAT(fluxbatch::test::thrown_message<fluxbatch::ModelError>([&] { T5Tokenizer t(dir.path()); }),
             ContainsSubstring("tokenizer_config.json"));
  fluxbatch::test::write_file(dir / "tokenizer_config.json", "{}");
  CHECK(T5Tokenizer(dir.path()).vocab_size() == 1100);
}
