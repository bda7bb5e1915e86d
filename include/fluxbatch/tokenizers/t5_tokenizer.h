// T5's SentencePiece tokenizer, identical to transformers' T5TokenizerFast for FLUX.1 prompts:
// special tokens (</s>, <pad>, <unk>, <extra_id_N>, or a tokenizer.json's added tokens) are matched in
// the raw text first, the rest goes through the Unigram model; then </s> and right padding with <pad>.
// Known difference: HF's Precompiled normalizer replaces a whole grapheme cluster shorter than 6 bytes by the
// mapping of its first character (dropping e.g. a combining mark after a full-width letter); SentencePiece
// keeps the rest of the cluster. Ordinary prompt text never hits this.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/tokenizers/tokenized_text.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace fluxbatch::tokenizers {

class T5Tokenizer {
 public:
  // Reads <folder>/spiece.model (and "extra_ids" from tokenizer_config.json when present, default 100),
  // or, when there is none, <folder>/tokenizer.json as transformers >= 5 saves it (the Unigram pieces and
  // scores, the Precompiled normalizer and the WhitespaceSplit / Metaspace pre-tokenizer it declares,
  // its added tokens). ModelError naming the file if missing, corrupt or of another kind.
  explicit T5Tokenizer(const std::filesystem::path& folder);
  ~T5Tokenizer();
  T5Tokenizer(T5Tokenizer&&) noexcept;
  T5Tokenizer& operator=(T5Tokenizer&&) noexcept;

  // [up to max_length-1 content ids, </s>, pad...]; InputError on invalid UTF-8 or max_length < 1.
  TokenizedText encode(const std::string& text, std::size_t max_length) const;
  // Content ids only (no </s>, no padding, no truncation).
  std::vector<std::int64_t> tokenize(const std::string& text) const;

  std::int64_t eos_id() const { return eos_id_; }
  std::int64_t pad_id() const { return pad_id_; }
  std::int64_t unk_id() const { return unk_id_; }
  // One more than the largest id it can produce; the T5 embedding table must have at least this many rows.
  std::int64_t vocab_size() const { return vocab_size_; }
  // The file it was read from (spiece.model or tokenizer.json), for messages.
  const std::filesystem::path& source() const { return model_path_; }

 private:
  struct Special {
    std::string text;
    std::int64_t id;
    bool lstrip = false;  // a tokenizer.json AddedToken that swallows the whitespace before it
    bool rstrip = false;  // ... after it
  };
  void load_spiece(const std::filesystem::path& folder);
  void load_tokenizer_json(const std::filesystem::path& path);
  void add_special(std::string text, std::int64_t id, bool lstrip = false, bool rstrip = false);
  void find_unmapped_whitespace();
  void encode_plain(const std::string& text, bool first_segment, std::vector<std::int64_t>& out) const;
  // The longest special token starting at text[pos], or nullptr.
  const Special* match_special(const std::string& text, std::size_t pos) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  // Metaspace prepend_scheme "first": the model without the leading "▁" for segments after the first.
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_inner_;
  std::filesystem::path model_path_;
  std::vector<char32_t> unmapped_whitespace_;
  bool split_unicode_whitespace_ = true;
  std::array<std::vector<Special>, 256> specials_;  // by first byte, longest first
  std::int64_t vocab_size_ = 0;
  std::int64_t eos_id_ = 1;
  std::int64_t pad_id_ = 0;
  std::int64_t unk_id_ = 2;
};

}  // namespace fluxbatch::tokenizers
