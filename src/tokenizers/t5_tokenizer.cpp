#include "fluxbatch/tokenizers/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string_view>

#include "fluxbatch/core/error.h"
#include "tokenizers/t5_tokenizer_json.h"
#include "tokenizers/unicode.h"

namespace fluxbatch::tokenizers {
namespace fs = std::filesystem;

namespace {

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
  if (!value.is_number_integer() || value.get<std::int64_t>() < 0 || value.get<std::int64_t>() > 100000) {
    throw ModelError("T5 tokenizer: " + config_path.string() + ": \"extra_ids\" must be an integer from 0 to 100000");
  }
  return value.get<std::int64_t>();
}

std::unique_ptr<sentencepiece::SentencePieceProcessor> load_processor(const std::string& proto, const fs::path& path) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->LoadFromSerializedProto(proto);
  if (!status.ok()) {
    throw ModelError("T5 tokenizer: " + path.string() + " is not a valid SentencePiece model: " + status.ToString());
  }
  return processor;
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

}  // namespace

T5Tokenizer::T5Tokenizer(const fs::path& folder) {
  // The classic file wins: it is what every tokenizer.json was converted from.
  if (!is_file(folder / "spiece.model") && is_file(folder / "tokenizer.json")) {
    load_tokenizer_json(folder / "tokenizer.json");
  } else {
    load_spiece(folder);
  }
  find_unmapped_whitespace();
}

void T5Tokenizer::load_spiece(const fs::path& folder) {
  model_path_ = folder / "spiece.model";
  processor_ = load_processor(read_binary_file(model_path_), model_path_);
  const std::int64_t pieces = processor_->GetPieceSize();
  eos_id_ = processor_->eos_id();
  pad_id_ = processor_->pad_id();
  unk_id_ = processor_->unk_id();
  if (eos_id_ < 0 || pad_id_ < 0 || pieces <= 0) {
    throw ModelError("T5 tokenizer: " + model_path_.string() + " defines no </s> or <pad> piece (T5 needs both)");
  }
  const std::int64_t extra_ids = read_extra_ids(folder / "tokenizer_config.json", 100);
  vocab_size_ = pieces + extra_ids;
  add_special("</s>", eos_id_);
  add_special("<pad>", pad_id_);
  if (unk_id_ >= 0) add_special("<unk>", unk_id_);
  // T5 numbers the sentinels downwards from the top of the vocabulary; only the canonical spelling is a
  // token ("<extra_id_07>" is plain text).
  for (std::int64_t n = 0; n < extra_ids; ++n) add_special("<extra_id_" + std::to_string(n) + ">", vocab_size_ - 1 - n);
}

void T5Tokenizer::load_tokenizer_json(const fs::path& path) {
  model_path_ = path;
  const detail::T5JsonModel model = detail::read_t5_tokenizer_json(path);
  processor_ = load_processor(model.spm_proto, path);
  if (!model.spm_proto_no_prefix.empty()) processor_inner_ = load_processor(model.spm_proto_no_prefix, path);
  split_unicode_whitespace_ = model.split_unicode_whitespace;
  eos_id_ = model.eos_id;
  pad_id_ = model.pad_id;
  unk_id_ = model.unk_id;
  vocab_size_ = model.vocab_size;
  for (const detail::AddedToken& token : model.added) add_special(token.content, token.id, token.lstrip, token.rstrip);
}

void T5Tokenizer::add_special(std::string text, std::int64_t id, bool lstrip, bool rstrip) {
  auto& bucket = specials_[static_cast<unsigned char>(text[0])];
  bucket.push_back({std::move(text), id, lstrip, rstrip});
  std::stable_sort(bucket.begin(), bucket.end(),
                   [](const Special& a, const Special& b) { return a.text.size() > b.text.size(); });
}

// HF splits words on every Unicode White_Space char left after the model's normalizer (WhitespaceSplit);
// SentencePiece only on " ". Probe which White_Space chars this model's normalizer neither maps to " " nor
// removes (U+0085 for nmt_nfkc) so encode_plain can turn them into " " first.
void T5Tokenizer::find_unmapped_whitespace() {
  if (!split_unicode_whitespace_) return;
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

const T5Tokenizer::Special* T5Tokenizer::match_special(const std::string& text, std::size_t pos) const {
  for (const Special& special : specials_[static_cast<unsigned char>(text[pos])]) {
    if (text.compare(pos, special.text.size(), special.text) == 0) return &special;
  }
  return nullptr;
}

void T5Tokenizer::encode_plain(const std::string& text, bool first_segment, std::vector<std::int64_t>& out) const {
  if (text.empty()) return;
  std::string input = text;
  if (!unmapped_whitespace_.empty()) {
    std::u32string chars = unicode::decode_utf8(text, "T5 prompt");
    for (char32_t& c : chars) {
      if (std::find(unmapped_whitespace_.begin(), unmapped_whitespace_.end(), c) != unmapped_whitespace_.end()) c = U' ';
    }
    input = unicode::encode_utf8(chars);
  }
  // prepend_scheme "first": a later segment gets no "▁" of its own, only one from the whitespace it starts with.
  const bool inner = !first_segment && processor_inner_ && !unicode::is_whitespace(unicode::decode_utf8(input, "T5 prompt")[0]);
  const auto& processor = inner ? processor_inner_ : processor_;
  std::vector<int> ids;
  const auto status = processor->Encode(input, &ids);
  if (!status.ok()) {
    throw InputError("T5 tokenizer: cannot encode prompt with " + model_path_.string() + ": " + status.ToString());
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

namespace {

// Length of the run of White_Space characters that ends at byte `end` / starts at byte `begin` of `text`
// (valid UTF-8).
std::size_t whitespace_before(const std::string& text, std::size_t end, std::size_t floor) {
  std::size_t start = end;
  while (start > floor) {
    std::size_t lead = start - 1;
    while (lead > floor && (static_cast<unsigned char>(text[lead]) & 0xC0) == 0x80) --lead;
    const std::u32string c = unicode::decode_utf8(std::string_view(text).substr(lead, start - lead), "T5 prompt");
    if (c.empty() || !unicode::is_whitespace(c[0])) break;
    start = lead;
  }
  return end - start;
}

std::size_t whitespace_after(const std::string& text, std::size_t begin) {
  std::size_t end = begin;
  while (end < text.size()) {
    std::size_t next = end + 1;
    while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
    const std::u32string c = unicode::decode_utf8(std::string_view(text).substr(end, next - end), "T5 prompt");
    if (c.empty() || !unicode::is_whitespace(c[0])) break;
    end = next;
  }
  return end - begin;
}

}  // namespace

std::vector<std::int64_t> T5Tokenizer::tokenize(const std::string& text) const {
  unicode::decode_utf8(text, "T5 prompt");  // validates; SentencePiece would silently replace bad bytes
  std::vector<std::int64_t> ids;
  std::size_t segment_start = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    const Special* special = match_special(text, pos);
    if (special == nullptr) {
      ++pos;
      continue;
    }
    // HF's AddedToken lstrip / rstrip: the whitespace next to the token belongs to it.
    const std::size_t left = special->lstrip ? whitespace_before(text, pos, segment_start) : 0;
    encode_plain(text.substr(segment_start, pos - left - segment_start), segment_start == 0, ids);
    ids.push_back(special->id);
    pos += special->text.size();
    if (special->rstrip) pos += whitespace_after(text, pos);
    segment_start = pos;
  }
  encode_plain(text.substr(segment_start), segment_start == 0, ids);
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
