// T5's SentencePiece tokenizer, identical to transformers' T5TokenizerFast for FLUX.1 prompts:
// special tokens (</s>, <pad>, <unk>, <extra_id_N>) are matched in the raw text first, the rest goes through
// spiece.model; then </s> and right padding with <pad> (id 0).
// Known difference: HF's Precompiled normalizer replaces a whole grapheme cluster shorter than 6 bytes by the
// mapping of its first character (dropping e.g. a combining mark after a full-width letter); SentencePiece
// keeps the rest of the cluster. Ordinary prompt text never hits this.
#pragma once
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
  // Reads <folder>/spiece.model (and "extra_ids" from tokenizer_config.json when present, default 100);
  // ModelError naming the file if missing or corrupt.
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
  // SentencePiece pieces plus the extra ids; the T5 embedding table must be at least this large.
  std::int64_t vocab_size() const { return piece_count_ + extra_ids_; }

 private:
  void find_unmapped_whitespace();
  void encode_plain(const std::string& text, std::vector<std::int64_t>& out) const;
  // Length of a special token starting at text[pos] (0 if none) and its id.
  std::size_t match_special(const std::string& text, std::size_t pos, std::int64_t& id) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::filesystem::path model_path_;
  std::vector<char32_t> unmapped_whitespace_;
  std::int64_t piece_count_ = 0;
  std::int64_t extra_ids_ = 100;
  std::int64_t eos_id_ = 1;
  std::int64_t pad_id_ = 0;
  std::int64_t unk_id_ = 2;
};

}  // namespace fluxbatch::tokenizers
