#include "fluxbatch/tokenizers/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "fluxbatch/core/error.h"
#include "tokenizers/unicode.h"

namespace fluxbatch::tokenizers {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kExtraIdPrefix = "<extra_id_";

std::string read_binary_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError("T5 tokenizer: cannot open SentencePiece model " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::int64_t read_extra_ids(const fs::path& config_path, std::int64_t fallback) {
  if (!fs::exists(config_path)) return fallback;
  std::ifstream in(config_path, std::ios::binary);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError("T5 tokenizer: " + config_path.string() + " is not valid JSON: " + e.what());
  }
  if (!json.is_object() || !json.contains("extra_ids")) return fallback;
  const auto& value = json["extra_ids"];
  if (!value.is_number_integer() || value.get<std::int64_t>() < 0) {
    throw ModelError("T5 tokenizer: " + config_path.string() + ": \"extra_ids\" must be a non-negative integer");
  }
  return value.get<std::int64_t>();
}

}  // namespace

T5Tokenizer::T5Tokenizer(const fs::path& folder)
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()), model_path_(folder / "spiece.model") {
  const std::string proto = read_binary_file(model_path_);
  const auto status = processor_->LoadFromSerializedProto(proto);
  if (!status.ok()) {
    throw ModelError("T5 tokenizer: " + model_path_.string() + " is not a valid SentencePiece model: " +
                     status.ToString());
  }
  piece_count_ = processor_->GetPieceSize();
  eos_id_ = processor_->eos_id();
  pad_id_ = processor_->pad_id();
  unk_id_ = processor_->unk_id();
  if (eos_id_ < 0 || pad_id_ < 0 || piece_count_ <= 0) {
    throw ModelError("T5 tokenizer: " + model_path_.string() + " defines no </s> or <pad> piece (T5 needs both)");
  }
  extra_ids_ = read_extra_ids(folder / "tokenizer_config.json", extra_ids_);
  find_unmapped_whitespace();
}

// HF splits words on every Unicode White_Space char left after the model's normalizer; SentencePiece only on
// " ". Probe which White_Space chars this model's normalizer neither maps to " " nor removes (U+0085 for
// nmt_nfkc) so encode_plain can turn them into " " first.
void T5Tokenizer::find_unmapped_whitespace() {
  static constexpr char32_t kWhiteSpace[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x20,   0x85,   0xA0,
                                             0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
                                             0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F,
                                             0x3000};
  const std::vector<int> spaced = processor_->EncodeAsIds("a a"), joined = processor_->EncodeAsIds("aa");
  for (char32_t c : kWhiteSpace) {
    std::string probe = "a";
    unicode::append_utf8(probe, c);
    probe += "a";
    const std::vector<int> ids = processor_->EncodeAsIds(probe);
    if (ids != spaced && ids != joined) unmapped_whitespace_.push_back(c);
  }
}

T5Tokenizer::~T5Tokenizer() = default;
T5Tokenizer::T5Tokenizer(T5Tokenizer&&) noexcept = default;
T5Tokenizer& T5Tokenizer::operator=(T5Tokenizer&&) noexcept = default;

std::size_t T5Tokenizer::match_special(const std::string& text, std::size_t pos, std::int64_t& id) const {
  const std::string_view rest(text.data() + pos, text.size() - pos);
  const std::pair<std::string_view, std::int64_t> fixed[] = {{"</s>", eos_id_}, {"<pad>", pad_id_}, {"<unk>", unk_id_}};
  for (const auto& [token, token_id] : fixed) {
    if (token_id >= 0 && rest.substr(0, token.size()) == token) {
      id = token_id;
      return token.size();
    }
  }
  if (rest.substr(0, kExtraIdPrefix.size()) != kExtraIdPrefix) return 0;
  std::size_t end = kExtraIdPrefix.size();
  std::int64_t n = 0;
  while (end < rest.size() && rest[end] >= '0' && rest[end] <= '9' && end - kExtraIdPrefix.size() < 6) {
    n = n * 10 + (rest[end] - '0');
    ++end;
  }
  const std::size_t digits = end - kExtraIdPrefix.size();
  // Only the canonical spelling is a token: "<extra_id_07>" is plain text.
  if (digits == 0 || end >= rest.size() || rest[end] != '>' || (digits > 1 && rest[kExtraIdPrefix.size()] == '0') ||
      n >= extra_ids_) {
    return 0;
  }
  id = piece_count_ + extra_ids_ - 1 - n;  // T5 numbers the sentinels downwards from the top of the vocab
  return end + 1;
}

void T5Tokenizer::encode_plain(const std::string& text, std::vector<std::int64_t>& out) const {
  if (text.empty()) return;
  std::string input = text;
  if (!unmapped_whitespace_.empty()) {
    std::u32string chars = unicode::decode_utf8(text, "T5 prompt");
    for (char32_t& c : chars) {
      if (std::find(unmapped_whitespace_.begin(), unmapped_whitespace_.end(), c) != unmapped_whitespace_.end()) c = U' ';
    }
    input = unicode::encode_utf8(chars);
  }
  std::vector<int> ids;
  const auto status = processor_->Encode(input, &ids);
  if (!status.ok()) {
    throw InputError("T5 tokenizer: cannot encode prompt with " + model_path_.string() + ": " + status.ToString());
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<std::int64_t> T5Tokenizer::tokenize(const std::string& text) const {
  unicode::decode_utf8(text, "T5 prompt");  // validates; SentencePiece would silently replace bad bytes
  std::vector<std::int64_t> ids;
  std::size_t segment_start = 0;
  for (std::size_t pos = text.find('<'); pos != std::string::npos; pos = text.find('<', pos)) {
    std::int64_t id = -1;
    const std::size_t len = match_special(text, pos, id);
    if (len == 0) {
      ++pos;
      continue;
    }
    encode_plain(text.substr(segment_start, pos - segment_start), ids);
    ids.push_back(id);
    pos += len;
    segment_start = pos;
  }
  encode_plain(text.substr(segment_start), ids);
  return ids;
}

TokenizedText T5Tokenizer::encode(const std::string& text, std::size_t max_length) const {
  if (max_length < 1) throw InputError("T5 tokenizer: max_length must be at least 1 (room for </s>)");
  std::vector<std::int64_t> content = tokenize(text);
  TokenizedText result;
  result.truncated = content.size() > max_length - 1;
  if (result.truncated) content.resize(max_length - 1);
  result.ids = std::move(content);
  result.ids.push_back(eos_id_);
  result.ids.resize(max_length, pad_id_);
  return result;
}

}  // namespace fluxbatch::tokenizers
