// Both tokenizers read from tokenizer.json alone (what transformers >= 5 saves), against transformers' ids.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fstream>
#include <nlohmann/json.hpp>

#include "fluxbatch/core/error.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"
#include "golden_tokens.h"
#include "test_support.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::ModelError;
using fluxbatch::tokenizers::ClipTokenizer;
using fluxbatch::tokenizers::T5Tokenizer;
namespace fs = std::filesystem;
namespace test = fluxbatch::test;

namespace {

// The tokenizer folders of FluxPipeline.save_pretrained with transformers 5 (scripts/make_layout_fixtures.py).
fs::path tf5_dir(const std::string& sub) {
  return test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev-tf5" / sub);
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(test::require_generated(path));
  return nlohmann::json::parse(in);
}

// A folder holding only `json` as tokenizer.json.
void write_tokenizer_json(const test::TempDir& dir, const nlohmann::json& json) {
  test::write_file(dir / "tokenizer.json", json.dump());
}

}  // namespace

TEST_CASE("tokenizer.json of transformers 5 holds no classic files", "[tokenizers][layouts]") {
  CHECK(fs::exists(tf5_dir("tokenizer") / "tokenizer.json"));
  CHECK_FALSE(fs::exists(tf5_dir("tokenizer") / "vocab.json"));
  CHECK_FALSE(fs::exists(tf5_dir("tokenizer") / "merges.txt"));
  CHECK(fs::exists(tf5_dir("tokenizer_2") / "tokenizer.json"));
  CHECK_FALSE(fs::exists(tf5_dir("tokenizer_2") / "spiece.model"));
}

TEST_CASE("CLIP tokenizer from tokenizer.json reproduces transformers on every golden text", "[tokenizers][layouts]") {
  const ClipTokenizer json_tok(tf5_dir("tokenizer"));
  CHECK(json_tok.source().filename() == "tokenizer.json");
  CHECK(json_tok.vocab_size() == 49408);
  CHECK(json_tok.id_limit() == 49408);
  CHECK(json_tok.bos_id() == 49406);
  CHECK(json_tok.eos_id() == 49407);
  const ClipTokenizer classic(test::tiny_tokenizer_dir("tokenizer"));
  CHECK(classic.source().filename() == "vocab.json");
  const auto cases = test::load_golden_tokens("clip");
  REQUIRE(cases.size() > 60);
  for (const auto& c : cases) {
    INFO("text: " << c.text);
    CHECK(json_tok.encode(c.text, 77).ids == c.ids);
    CHECK(json_tok.tokenize(c.text) == classic.tokenize(c.text));
  }
}

TEST_CASE("T5 tokenizer from tokenizer.json reproduces transformers on every golden text", "[tokenizers][layouts]") {
  const T5Tokenizer json_tok(tf5_dir("tokenizer_2"));
  CHECK(json_tok.source().filename() == "tokenizer.json");
  CHECK(json_tok.vocab_size() == 1100);
  CHECK(json_tok.eos_id() == 1);
  CHECK(json_tok.pad_id() == 0);
  CHECK(json_tok.unk_id() == 2);
  CHECK(json_tok.tokenize("<extra_id_0>") == std::vector<std::int64_t>{1099});
  CHECK(json_tok.tokenize("<extra_id_99>") == std::vector<std::int64_t>{1000});
  const auto cases = test::load_golden_tokens("t5");
  REQUIRE(cases.size() > 60);
  for (const auto& c : cases) {
    INFO("text: " << c.text << "  max_length: " << c.max_length);
    CHECK(json_tok.encode(c.text, c.max_length).ids == c.ids);
  }
}

TEST_CASE("T5 tokenizer.json in every form transformers writes gives HF tokenizers' ids", "[tokenizers][layouts]") {
  const fs::path root = fs::path(FLUXBATCH_MODELS_DIR) / "tokenizer-json";
  const nlohmann::json golden = read_json(root / "tokens.json");
  REQUIRE(golden.size() == 5);
  for (const auto& [name, cases] : golden.items()) {
    INFO("variant: " << name);
    const T5Tokenizer tok(test::require_generated(root / name));
    REQUIRE(cases.size() > 60);
    for (const auto& c : cases) {
      INFO("text: " << c.at("text").get<std::string>());
      CHECK(tok.tokenize(c.at("text").get<std::string>()) == c.at("ids").get<std::vector<std::int64_t>>());
    }
  }
}

TEST_CASE("classic tokenizer files win over tokenizer.json", "[tokenizers][layouts]") {
  test::TempDir dir;
  for (const char* name : {"vocab.json", "merges.txt"}) fs::copy_file(test::tiny_tokenizer_dir("tokenizer") / name, dir / name);
  fs::copy_file(tf5_dir("tokenizer_2") / "tokenizer.json", dir / "tokenizer.json");  // T5's: would be refused
  CHECK(ClipTokenizer(dir.path()).source().filename() == "vocab.json");
  test::TempDir t5;
  fs::copy_file(test::tiny_tokenizer_dir("tokenizer_2") / "spiece.model", t5 / "spiece.model");
  fs::copy_file(tf5_dir("tokenizer") / "tokenizer.json", t5 / "tokenizer.json");  // CLIP's: would be refused
  CHECK(T5Tokenizer(t5.path()).source().filename() == "spiece.model");
}

TEST_CASE("a tokenizer.json of another kind is refused naming the file and what it declares", "[tokenizers][layouts]") {
  const nlohmann::json clip = read_json(tf5_dir("tokenizer") / "tokenizer.json");
  const nlohmann::json t5 = read_json(tf5_dir("tokenizer_2") / "tokenizer.json");
  test::TempDir dir;
  const auto clip_error = [&] { return test::thrown_message<ModelError>([&] { ClipTokenizer t(dir.path()); }); };
  const auto t5_error = [&] { return test::thrown_message<ModelError>([&] { T5Tokenizer t(dir.path()); }); };

  write_tokenizer_json(dir, t5);  // T5's file where CLIP's belongs
  CHECK_THAT(clip_error(), ContainsSubstring((dir / "tokenizer.json").string()) &&
                               ContainsSubstring("its model is Unigram, not BPE"));
  write_tokenizer_json(dir, clip);
  CHECK_THAT(t5_error(), ContainsSubstring("its model is BPE, not Unigram"));

  nlohmann::json changed = clip;
  changed["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}, {{"type", "Lowercase"}}}}};
  write_tokenizer_json(dir, changed);
  CHECK_THAT(clip_error(), ContainsSubstring("declares the normalizer Sequence[NFKC, Lowercase]"));
  changed = clip;
  changed["pre_tokenizer"] = {{"type", "Whitespace"}};
  write_tokenizer_json(dir, changed);
  CHECK_THAT(clip_error(), ContainsSubstring("declares the pre-tokenizer Whitespace"));
  changed = clip;
  changed["model"]["end_of_word_suffix"] = nullptr;
  write_tokenizer_json(dir, changed);
  CHECK_THAT(clip_error(), ContainsSubstring("not CLIP's"));
  changed = clip;
  changed["model"]["merges"][0] = nlohmann::json::array({"zzz_not", "in_vocab"});
  write_tokenizer_json(dir, changed);
  CHECK_THAT(clip_error(), ContainsSubstring("merge 0 merges tokens missing"));

  changed = t5;
  changed["normalizer"] = {{"type", "Lowercase"}};
  write_tokenizer_json(dir, changed);
  CHECK_THAT(t5_error(), ContainsSubstring("declares the normalizer Lowercase"));
  changed = t5;
  changed["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}};
  write_tokenizer_json(dir, changed);  // runs of spaces would become pieces: not what SentencePiece does
  CHECK_THAT(t5_error(), ContainsSubstring("runs of spaces would become separate pieces"));
  changed = t5;
  changed["model"]["byte_fallback"] = true;
  write_tokenizer_json(dir, changed);
  CHECK_THAT(t5_error(), ContainsSubstring("byte_fallback"));
  changed = t5;
  changed["added_tokens"] = nlohmann::json::array();
  changed["model"]["vocab"][1][0] = "</not-eos>";
  write_tokenizer_json(dir, changed);
  CHECK_THAT(t5_error(), ContainsSubstring("defines no </s> or <pad> token"));

  test::write_file(dir / "tokenizer.json", "{\"model\": ");
  CHECK_THAT(t5_error(), ContainsSubstring("tokenizer.json is not valid JSON"));
  CHECK_THAT(clip_error(), ContainsSubstring("tokenizer.json is not valid JSON"));
}
