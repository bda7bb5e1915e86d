// T5's tokenizer from an HF tokenizers "tokenizer.json" (transformers >= 5 saves only that): the
// Unigram pieces and scores, the normalizer and pre-tokenizer it declares, and its added tokens,
// turned into a SentencePiece model so that T5Tokenizer runs the same code for both sources.
// Internal to src/tokenizers.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tokenizers/tokenizer_json.h"

namespace fluxbatch::tokenizers::detail {

struct T5JsonModel {
  std::string spm_proto;            // a serialized sentencepiece ModelProto
  // Metaspace prepend_scheme "first": the model for text after the first segment, without the "▁"
  // that SentencePiece's dummy prefix adds; empty otherwise.
  std::string spm_proto_no_prefix;
  bool split_unicode_whitespace = true;  // the pre-tokenizer has WhitespaceSplit
  std::vector<AddedToken> added;         // matched in the raw text before the model, as HF does
  std::int64_t vocab_size = 0;           // model pieces and added tokens: the largest id + 1
  std::int64_t eos_id = -1, pad_id = -1, unk_id = -1;
};

// Reads `path`; ModelError naming the file and what it declares when it is not a T5 Unigram
// tokenizer in a form fluxbatch reproduces exactly (see README "Tokenizers").
T5JsonModel read_t5_tokenizer_json(const std::filesystem::path& path);

}  // namespace fluxbatch::tokenizers::detail
