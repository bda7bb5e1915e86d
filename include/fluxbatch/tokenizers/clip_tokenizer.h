// CLIP's byte-level BPE tokenizer, identical to transformers' CLIPTokenizer (HF tokenizers backend):
// NFC, whitespace runs -> " ", lower-case, CLIP's pre-tokenizer regex, byte-level BPE with "</w>",
// <|startoftext|> ... <|endoftext|>, right-padded with <|endoftext|>.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fluxbatch/tokenizers/tokenized_text.h"

namespace fluxbatch::tokenizers {

class ClipTokenizer {
 public:
  static constexpr std::size_t kDefaultMaxLength = 77;

  // Reads <folder>/vocab.json and <folder>/merges.txt, or, when neither is there, <folder>/tokenizer.json
  // as transformers >= 5 saves it (vocab and merges of its BPE model; its normalizer and pre-tokenizer
  // must be CLIP's). ModelError naming the file if missing, corrupt or of another kind.
  explicit ClipTokenizer(const std::filesystem::path& folder);

  // [BOS, up to max_length-2 content ids, EOS, pad...]; InputError on invalid UTF-8 or max_length < 2.
  TokenizedText encode(const std::string& text, std::size_t max_length = kDefaultMaxLength) const;
  // Content ids only (no BOS/EOS/padding, no truncation).
  std::vector<std::int64_t> tokenize(const std::string& text) const;

  std::int64_t bos_id() const { return bos_id_; }
  std::int64_t eos_id() const { return eos_id_; }
  std::int64_t pad_id() const { return eos_id_; }  // CLIP pads with <|endoftext|>
  std::size_t vocab_size() const { return vocab_.size(); }
  // One more than the largest id it can produce; the CLIP embedding table must have at least this many rows.
  std::int64_t id_limit() const { return max_id_ + 1; }
  // The file the vocabulary was read from (vocab.json or tokenizer.json), for messages.
  const std::filesystem::path& source() const { return source_; }

 private:
  struct Merge {
    std::int32_t rank;
    std::int64_t merged_id;
  };

  void load_tokenizer_json(const std::filesystem::path& path);
  void load_vocab(const std::vector<std::pair<std::string, std::int64_t>>& entries, const std::string& where);
  void add_merge(const std::string& left, const std::string& right, const std::string& where, const char* vocab_name);
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
  std::int64_t max_id_ = -1;
  std::int32_t next_rank_ = 0;
  std::filesystem::path source_;
};

}  // namespace fluxbatch::tokenizers
