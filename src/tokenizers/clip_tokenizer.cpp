#include "fluxbatch/tokenizers/clip_tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string_view>

#include "fluxbatch/core/error.h"
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

}  // namespace

ClipTokenizer::ClipTokenizer(const fs::path& folder) {
  load_vocab(folder / "vocab.json");
  load_merges(folder / "merges.txt");
}

void ClipTokenizer::load_vocab(const fs::path& path) {
  const std::string text = read_text_file(path, "vocabulary");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError("CLIP tokenizer: " + path.string() + " is not valid JSON: " + e.what());
  }
  if (!json.is_object() || json.empty()) {
    throw ModelError("CLIP tokenizer: " + path.string() + " must be a JSON object of token -> id");
  }
  for (const auto& [token, id] : json.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0) {
      throw ModelError("CLIP tokenizer: " + path.string() + ": id of token '" + token + "' is not a non-negative integer");
    }
    vocab_.emplace(token, id.get<std::int64_t>());
  }
  auto require = [&](const std::string& token) {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) throw ModelError("CLIP tokenizer: " + path.string() + " lacks token '" + token + "'");
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

void ClipTokenizer::load_merges(const fs::path& path) {
  std::istringstream in(read_text_file(path, "merges file"));
  std::string line;
  std::int32_t rank = 0;
  std::size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const std::size_t space = line.find(' ');
    const std::string where = path.string() + " line " + std::to_string(line_no);
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw ModelError("CLIP tokenizer: " + where + " is not a merge of two tokens: '" + line + "'");
    }
    const std::string left = line.substr(0, space), right = line.substr(space + 1);
    const auto l = vocab_.find(left), r = vocab_.find(right), m = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || m == vocab_.end()) {
      throw ModelError("CLIP tokenizer: " + where + " merges tokens missing from vocab.json: '" + line + "'");
    }
    merges_.emplace((std::uint64_t(l->second) << 32) | std::uint64_t(r->second), Merge{rank++, m->second});
  }
  if (merges_.empty()) throw ModelError("CLIP tokenizer: " + path.string() + " holds no merges");
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
