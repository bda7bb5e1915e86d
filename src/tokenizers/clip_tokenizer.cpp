#include "fluxbatch/tokenizers/clip_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string_view>

#include "fluxbatch/core/error.h"
#include "tokenizers/tokenizer_json.h"
#include "tokenizers/unicode.h"

namespace fluxbatch::tokenizers {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kBosToken = "<|startoftext|>";
constexpr std::string_view kEosToken = "<|endoftext|>";
constexpr std::string_view kEndOfWord = "</w>";

std::string read_text_file(const fs::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError("CLIP tokenizer: cannot open " + std::string(what) + " " + path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's reversible byte -> printable unicode char table.
std::vector<char32_t> byte_level_alphabet() {
  std::vector<char32_t> table(256, 0);
  std::vector<bool> printable(256, false);
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = printable[b] ? char32_t(b) : next++;
  return table;
}

bool starts_with(std::u32string_view s, std::size_t pos, std::u32string_view prefix) {
  return s.size() - pos >= prefix.size() && s.compare(pos, prefix.size(), prefix) == 0;
}

// CLIP's pre-tokenizer: the regex
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// keeping matches and dropping whitespace, followed by ByteLevel's GPT-2 regex, which only re-splits the
// special-token literals (into "<|", the letters, "|>"); every other piece already is one GPT-2 piece.
std::vector<std::u32string> pre_tokenize(const std::u32string& s) {
  using unicode::is_letter;
  using unicode::is_number;
  using unicode::is_whitespace;
  static const std::u32string_view kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  static const std::u32string_view kLiterals[] = {U"<|startoftext|>", U"<|endoftext|>"};
  std::vector<std::u32string> pieces;
  std::size_t i = 0;
  auto run = [&](auto pred) {
    std::size_t j = i;
    while (j < s.size() && pred(s[j])) ++j;
    return j;
  };
  while (i < s.size()) {
    const char32_t c = s[i];
    if (is_whitespace(c)) {
      ++i;
      continue;
    }
    bool matched = false;
    for (auto lit : kLiterals) {
      if (starts_with(s, i, lit)) {
        pieces.emplace_back(U"<|");
        pieces.emplace_back(lit.substr(2, lit.size() - 4));
        pieces.emplace_back(U"|>");
        i += lit.size();
        matched = true;
        break;
      }
    }
    for (auto con : kContractions) {
      if (matched) break;
      if (starts_with(s, i, con)) {
        pieces.emplace_back(con);
        i += con.size();
        matched = true;
      }
    }
    if (matched) continue;
    std::size_t j;
    if (is_letter(c)) {
      j = run([](char32_t x) { return is_letter(x); });
    } else if (is_number(c)) {
      j = i + 1;
    } else {
      j = run([](char32_t x) { return !is_whitespace(x) && !is_letter(x) && !is_number(x); });
    }
    pieces.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return pieces;
}

// HF's normalizer chain: NFC, every whitespace run -> one " ", lower-case.
std::u32string normalize(const std::u32string& text) {
  const std::u32string composed = unicode::nfc(text);
  std::u32string collapsed;
  collapsed.reserve(composed.size());
  bool in_space = false;
  for (char32_t c : composed) {
    if (unicode::is_whitespace(c)) {
      if (!in_space) collapsed.push_back(U' ');
      in_space = true;
    } else {
      collapsed.push_back(c);
      in_space = false;
    }
  }
  return unicode::to_lower(collapsed);
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// What transformers writes for CLIP (tokenization_clip.py, and convert_slow_tokenizer's CLIPConverter).
constexpr std::string_view kClipSplitRegex =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

[[noreturn]] void refuse_json(const std::string& where, const std::string& what) {
  throw ModelError("CLIP tokenizer: " + where + ": " + what +
                   "; fluxbatch reads CLIP's byte-level BPE (NFC, whitespace runs -> \" \", lowercase; CLIP's split "
                   "regex + ByteLevel; end-of-word suffix </w>), or put CLIP's vocab.json and merges.txt in the folder");
}

// The normalizer and pre-tokenizer must be CLIP's: the C++ code implements exactly those.
void check_clip_pipeline(const nlohmann::json& root, const std::string& where) {
  const auto normalizers = detail::flatten_sequence(root.value("normalizer", nlohmann::json()), "normalizers");
  const bool normalizer_ok =
      normalizers.size() == 3 && normalizers[0].value("type", "") == "NFC" &&
      normalizers[1].value("type", "") == "Replace" && normalizers[1].contains("pattern") &&
      normalizers[1]["pattern"].is_object() && normalizers[1]["pattern"].value("Regex", "") == "\\s+" &&
      normalizers[1].value("content", "") == " " && normalizers[2].value("type", "") == "Lowercase";
  if (!normalizer_ok) {
    refuse_json(where, "it declares the normalizer " + detail::describe_component(root.value("normalizer", nlohmann::json())));
  }
  const auto pre = detail::flatten_sequence(root.value("pre_tokenizer", nlohmann::json()), "pretokenizers");
  const bool pre_ok = pre.size() == 2 && pre[0].value("type", "") == "Split" && pre[0].contains("pattern") &&
                      pre[0]["pattern"].is_object() && pre[0]["pattern"].value("Regex", "") == kClipSplitRegex &&
                      pre[0].value("behavior", "") == "Removed" && pre[0].value("invert", false) &&
                      pre[1].value("type", "") == "ByteLevel" && !pre[1].value("add_prefix_space", false);
  if (!pre_ok) {
    refuse_json(where, "it declares the pre-tokenizer " +
                           detail::describe_component(root.value("pre_tokenizer", nlohmann::json())));
  }
}

// token -> id pairs of a vocabulary object, checked.
std::vector<std::pair<std::string, std::int64_t>> vocab_entries(const nlohmann::json& json, const std::string& where) {
  if (!json.is_object() || json.empty()) {
    throw ModelError("CLIP tokenizer: " + where + " must be a JSON object of token -> id");
  }
  std::vector<std::pair<std::string, std::int64_t>> entries;
  entries.reserve(json.size());
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() >= (std::int64_t{1} << 31)) {
      throw ModelError("CLIP tokenizer: " + where + ": id of token '" + token + "' is not an integer from 0 to 2^31-1");
    }
    entries.emplace_back(token, id.get<std::int64_t>());
  }
  return entries;
}

}  // namespace

ClipTokenizer::ClipTokenizer(const fs::path& folder) {
  // The classic files win when both are there (the FLUX.1 repositories ship only those).
  if (!is_file(folder / "vocab.json") && !is_file(folder / "merges.txt") && is_file(folder / "tokenizer.json")) {
    load_tokenizer_json(folder / "tokenizer.json");
    return;
  }
  source_ = folder / "vocab.json";
  const fs::path vocab_path = folder / "vocab.json";
  const std::string text = read_text_file(vocab_path, "vocabulary");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError("CLIP tokenizer: " + vocab_path.string() + " is not valid JSON: " + e.what());
  }
  load_vocab(vocab_entries(json, vocab_path.string()), vocab_path.string());
  const fs::path merges_path = folder / "merges.txt";
  std::istringstream in(read_text_file(merges_path, "merges file"));
  std::string line;
  std::size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const std::size_t space = line.find(' ');
    const std::string where = merges_path.string() + " line " + std::to_string(line_no);
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw ModelError("CLIP tokenizer: " + where + " is not a merge of two tokens: '" + line + "'");
    }
    add_merge(line.substr(0, space), line.substr(space + 1), where, "vocab.json");
  }
  if (merges_.empty()) throw ModelError("CLIP tokenizer: " + merges_path.string() + " holds no merges");
}

void ClipTokenizer::load_tokenizer_json(const fs::path& path) {
  source_ = path;
  const std::string where = path.string();
  const nlohmann::json root = detail::read_tokenizer_json(path, "CLIP tokenizer");
  const nlohmann::json& model = root["model"];
  if (model.value("type", "") != "BPE") refuse_json(where, "its model is " + detail::describe_component(model) + ", not BPE");
  const auto string_or_empty = [&](const char* key) {
    return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : std::string();
  };
  if (string_or_empty("end_of_word_suffix") != kEndOfWord || !string_or_empty("continuing_subword_prefix").empty() ||
      model.value("byte_fallback", false)) {
    refuse_json(where, "its BPE model is not CLIP's (end_of_word_suffix \"" + string_or_empty("end_of_word_suffix") +
                           "\", continuing_subword_prefix \"" + string_or_empty("continuing_subword_prefix") + "\")");
  }
  check_clip_pipeline(root, where);
  if (!model.contains("vocab")) refuse_json(where, "its BPE model has no \"vocab\"");
  load_vocab(vocab_entries(model["vocab"], where), where);
  for (const detail::AddedToken& token : detail::added_tokens(root, where)) {
    const auto it = vocab_.find(token.content);
    if (it == vocab_.end() || it->second != token.id) {
      refuse_json(where, "added token '" + token.content + "' (id " + std::to_string(token.id) +
                             ") is not the vocabulary's entry");
    }
  }
  if (!model.contains("merges") || !model["merges"].is_array() || model["merges"].empty()) {
    throw ModelError("CLIP tokenizer: " + where + ": the BPE model has no \"merges\"");
  }
  std::size_t index = 0;
  for (const auto& merge : model["merges"]) {
    const std::string at = where + " merge " + std::to_string(index++);
    // tokenizers >= 0.20 writes [left, right]; older files "left right".
    if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      add_merge(merge[0].get<std::string>(), merge[1].get<std::string>(), at, "its vocab");
      continue;
    }
    const std::string line = merge.is_string() ? merge.get<std::string>() : std::string();
    const std::size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw ModelError("CLIP tokenizer: " + at + " is not a merge of two tokens: " + merge.dump().substr(0, 60));
    }
    add_merge(line.substr(0, space), line.substr(space + 1), at, "its vocab");
  }
}

void ClipTokenizer::load_vocab(const std::vector<std::pair<std::string, std::int64_t>>& entries,
                               const std::string& where) {
  for (const auto& [token, id] : entries) {
    vocab_.emplace(token, id);
    max_id_ = std::max(max_id_, id);
  }
  auto require = [&](const std::string& token) {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) throw ModelError("CLIP tokenizer: " + where + " lacks token '" + token + "'");
    return it->second;
  };
  bos_id_ = require(std::string(kBosToken));
  eos_id_ = require(std::string(kEosToken));
  const std::vector<char32_t> alphabet = byte_level_alphabet();
  byte_chars_.resize(256);
  for (int b = 0; b < 256; ++b) {
    unicode::append_utf8(byte_chars_[b], alphabet[b]);
    byte_ids_[b] = require(byte_chars_[b]);
    byte_end_ids_[b] = require(byte_chars_[b] + std::string(kEndOfWord));
  }
}

void ClipTokenizer::add_merge(const std::string& left, const std::string& right, const std::string& where,
                              const char* vocab_name) {
  const auto l = vocab_.find(left), r = vocab_.find(right), m = vocab_.find(left + right);
  if (l == vocab_.end() || r == vocab_.end() || m == vocab_.end()) {
    throw ModelError("CLIP tokenizer: " + where + " merges tokens missing from " + vocab_name + ": '" + left + " " +
                     right + "'");
  }
  merges_.emplace((std::uint64_t(l->second) << 32) | std::uint64_t(r->second), Merge{next_rank_++, m->second});
}

const ClipTokenizer::Merge* ClipTokenizer::find_merge(std::int64_t left, std::int64_t right) const {
  const auto it = merges_.find((std::uint64_t(left) << 32) | std::uint64_t(right));
  return it == merges_.end() ? nullptr : &it->second;
}

// HF tokenizers' Word::merge_all: a queue of candidate merges ordered by (rank, position), each applied if
// still valid, new neighbour pairs pushed as they appear. (Not the "merge every occurrence" loop of
// openai/CLIP, which differs on rare overlapping pairs.)
void ClipTokenizer::bpe(const std::string& word, std::vector<std::int64_t>& out) const {
  const std::size_t n = word.size();
  std::vector<std::int64_t> sym(n);
  std::vector<std::ptrdiff_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (std::size_t i = 0; i < n; ++i) {
    const auto b = static_cast<unsigned char>(word[i]);
    sym[i] = (i + 1 == n) ? byte_end_ids_[b] : byte_ids_[b];
    prev[i] = std::ptrdiff_t(i) - 1;
    next[i] = (i + 1 == n) ? -1 : std::ptrdiff_t(i) + 1;
  }
  struct Candidate {
    std::int32_t rank;
    std::ptrdiff_t pos;
    std::int64_t merged_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](std::ptrdiff_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const Merge* m = find_merge(sym[pos], sym[next[pos]])) queue.push({m->rank, pos, m->merged_id});
  };
  for (std::size_t i = 0; i + 1 < n; ++i) push(std::ptrdiff_t(i));
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const std::ptrdiff_t right = next[top.pos];
    const Merge* m = find_merge(sym[top.pos], sym[right]);
    if (m == nullptr || m->merged_id != top.merged_id) continue;  // stale entry
    sym[top.pos] = top.merged_id;
    alive[right] = false;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    push(prev[top.pos]);
    push(top.pos);
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (alive[i]) out.push_back(sym[i]);
  }
}

void ClipTokenizer::tokenize_segment(const std::string& segment, std::vector<std::int64_t>& out) const {
  const std::u32string text = normalize(unicode::decode_utf8(segment, "CLIP prompt"));
  for (const std::u32string& piece : pre_tokenize(text)) bpe(unicode::encode_utf8(piece), out);
}

std::vector<std::int64_t> ClipTokenizer::tokenize(const std::string& text) const {
  // The special tokens are matched in the raw text first (case-sensitive), like HF's added tokens.
  std::vector<std::int64_t> ids;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t bos = text.find(kBosToken, pos), eos = text.find(kEosToken, pos);
    const std::size_t hit = std::min(bos, eos);
    tokenize_segment(text.substr(pos, hit == std::string::npos ? std::string::npos : hit - pos), ids);
    if (hit == std::string::npos) break;
    ids.push_back(hit == bos ? bos_id_ : eos_id_);
    pos = hit + (hit == bos ? kBosToken.size() : kEosToken.size());
  }
  return ids;
}

TokenizedText ClipTokenizer::encode(const std::string& text, std::size_t max_length) const {
  if (max_length < 2) throw InputError("CLIP tokenizer: max_length must be at least 2 (BOS + EOS)");
  std::vector<std::int64_t> content = tokenize(text);
  TokenizedText result;
  result.truncated = content.size() > max_length - 2;
  if (result.truncated) content.resize(max_length - 2);
  result.ids.reserve(max_length);
  result.ids.push_back(bos_id_);
  result.ids.insert(result.ids.end(), content.begin(), content.end());
  result.ids.push_back(eos_id_);
  result.ids.resize(max_length, pad_id());
  return result;
}

}  // namespace fluxbatch::tokenizers
