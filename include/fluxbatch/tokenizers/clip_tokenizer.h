// CLIP's byte-level BPE tokenizer, identical to transformers' CLIPTokenizer (HF tokenizers backend):
// NFC, whitespace runs -> " ", lower-case, CLIP's pre-tokenizer regex, byte-level BPE with "</w>",
// <|startoftext|> ... <|endoftext|>, right-padded with <|endoftext|>.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <vector>

#include "fluxbatch/tokenizers/tokenized_text.h"

namespace fluxbatch::tokenizers {

class ClipTokenizer {
 public:
  static constexpr std::size_t kDefaultMaxLength = 77;

  // Reads <folder>/vocab.json and <folder>/merges.txt; ModelError naming the file if missing or corrupt.
  explicit ClipTokenizer(const std::filesystem::path& folder);

  // [BOS, up to max_length-2 content ids, EOS, pad...]; InputError on invalid UTF-8 or max_length < 2.
  TokenizedText encode(const std::string& text, std::size_t max_length = kDefaultMaxLength) const;
  // Content ids only (no BOS/EOS/padding, no truncation).
  std::vector<std::int64_t> tokenize(const std::string& text) const;

  std::int64_t bos_id() const { return bos_id_; }
  std::int64_t eos_id() const { return eos_id_; }
  std::int64_t pad_id() const { return eos_id_; }  // CLIP pads with <|endoftext|>
  std::size_t vocab_size() const { return vocab_.size(); }

 private:
  struct Merge {
    std::int32_t rank;
    std::int64_t merged_id;
  };

  void load_vocab(const std::filesystem::path& path);
  void load_merges(const std::filesystem::path& path);
  void tokenize_segment(const std::string& segment, std::vector<std::int64_t>& out) const;
  void bpe(const std::string& word, std::vector<std::int64_t>& out) const;
  const Merge* find_merge(std::int64_t left, std::int64_t right) const;

  std::unordered_map<std::string, std::int64_t> vocab_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::vector<std::string> byte_chars_;  // byte -> its byte-level unicode char (UTF-8)
  std::int64_t byte_ids_[256] = {};
  std::int64_t byte_end_ids_[256] = {};  // byte char + "</w>"
  std::int64_t bos_id_ = -1;
  std::int64_t eos_id_ = -1;
};

}  // namespace fluxbatch::tokenizers
