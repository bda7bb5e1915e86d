#include "tokenizers/unicode.h"

#include <algorithm>
#include <unordered_map>

#include "fluxbatch/core/error.h"
#include "tokenizers/unicode_tables.h"

namespace fluxbatch::tokenizers::unicode {
namespace tables = unicode_tables;

namespace {

constexpr char32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161, kHangulTBase = 0x11A7;
constexpr char32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

template <typename R>
bool in_ranges(const R* ranges, std::size_t n, char32_t cp) {
  const R* end = ranges + n;
  const R* it = std::upper_bound(ranges, end, cp, [](char32_t c, const R& r) { return c < r.first; });
  return it != ranges && cp <= (it - 1)->last;
}

std::uint8_t combining_class(char32_t cp) {
  const auto* begin = tables::kCombiningClasses;
  const auto* end = begin + tables::kCombiningClassesSize;
  const auto* it = std::upper_bound(begin, end, cp, [](char32_t c, const auto& r) { return c < r.first; });
  return (it != begin && cp <= (it - 1)->last) ? (it - 1)->combining_class : 0;
}

const tables::Decomposition* find_decomposition(char32_t cp) {
  const auto* begin = tables::kDecompositions;
  const auto* end = begin + tables::kDecompositionsSize;
  const auto* it = std::lower_bound(begin, end, cp, [](const auto& d, char32_t c) { return d.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

void decompose_into(char32_t cp, std::u32string& out) {
  if (cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount) {
    const char32_t s = cp - kHangulSBase;
    out.push_back(kHangulLBase + s / kHangulNCount);
    out.push_back(kHangulVBase + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulTBase + s % kHangulTCount);
    return;
  }
  const tables::Decomposition* d = find_decomposition(cp);
  if (d == nullptr) {
    out.push_back(cp);
    return;
  }
  decompose_into(d->first, out);
  if (d->second != 0) decompose_into(d->second, out);
}

const std::unordered_map<std::uint64_t, char32_t>& composition_map() {
  static const std::unordered_map<std::uint64_t, char32_t> map = [] {
    std::unordered_map<std::uint64_t, char32_t> m;
    for (std::size_t i = 0; i < tables::kDecompositionsSize; ++i) {
      const auto& d = tables::kDecompositions[i];
      if (d.composes) m.emplace((std::uint64_t(d.first) << 32) | d.second, d.cp);
    }
    return m;
  }();
  return map;
}

// Returns 0 when the pair has no primary composite.
char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kHangulLBase && a < kHangulLBase + kHangulLCount && b >= kHangulVBase &&
      b < kHangulVBase + kHangulVCount) {
    return kHangulSBase + ((a - kHangulLBase) * kHangulVCount + (b - kHangulVBase)) * kHangulTCount;
  }
  if (a >= kHangulSBase && a < kHangulSBase + kHangulSCount && (a - kHangulSBase) % kHangulTCount == 0 &&
      b > kHangulTBase && b < kHangulTBase + kHangulTCount) {
    return a + (b - kHangulTBase);
  }
  const auto& map = composition_map();
  const auto it = map.find((std::uint64_t(a) << 32) | b);
  return it == map.end() ? 0 : it->second;
}

void canonical_order(std::u32string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (combining_class(s[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < s.size() && combining_class(s[j]) != 0) ++j;
    std::stable_sort(s.begin() + i, s.begin() + j,
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
}

// The canonical composition algorithm of UAX #15 (sample code, "lastClass" blocking rule).
void compose(std::u32string& s) {
  if (s.empty()) return;
  std::size_t starter_pos = 0;
  int last_class = combining_class(s[0]);
  if (last_class != 0) last_class = 256;  // a leading non-starter blocks everything after it
  std::size_t out = 1;
  for (std::size_t i = 1; i < s.size(); ++i) {
    const char32_t ch = s[i];
    const int ch_class = combining_class(ch);
    const char32_t composite = compose_pair(s[starter_pos], ch);
    if (composite != 0 && (last_class < ch_class || last_class == 0)) {
      s[starter_pos] = composite;
      continue;
    }
    if (ch_class == 0) starter_pos = out;
    last_class = ch_class;
    s[out++] = ch;
  }
  s.resize(out);
}

}  // namespace

std::u32string decode_utf8(std::string_view text, const char* what) {
  std::u32string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int len = 0;
    char32_t cp = 0;
    if (b0 < 0x80) {
      len = 1, cp = b0;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07;
    }
    bool ok = len > 0 && i + len <= text.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr char32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMinForLength[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) throw InputError(std::string(what) + " is not valid UTF-8 (bad byte at offset " + std::to_string(i) + ")");
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

bool is_letter(char32_t cp) { return in_ranges(tables::kLetterRanges, tables::kLetterRangesSize, cp); }

bool is_number(char32_t cp) { return in_ranges(tables::kNumberRanges, tables::kNumberRangesSize, cp); }

bool is_whitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

std::u32string nfc(std::u32string_view text) {
  std::u32string s;
  s.reserve(text.size());
  for (char32_t cp : text) decompose_into(cp, s);
  canonical_order(s);
  compose(s);
  return s;
}

std::u32string to_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t cp : text) {
    if (cp < 0x80) {
      out.push_back((cp >= 'A' && cp <= 'Z') ? cp + 32 : cp);
      continue;
    }
    const auto* begin = tables::kLowerDouble;
    const auto* it = std::find_if(begin, begin + tables::kLowerDoubleSize, [cp](const auto& d) { return d.cp == cp; });
    if (it != begin + tables::kLowerDoubleSize) {
      out.push_back(it->first);
      out.push_back(it->second);
      continue;
    }
    const auto* sb = tables::kLowerSingle;
    const auto* se = sb + tables::kLowerSingleSize;
    const auto* st = std::lower_bound(sb, se, cp, [](const auto& d, char32_t c) { return d.cp < c; });
    out.push_back((st != se && st->cp == cp) ? st->lower : cp);
  }
  return out;
}

}  // namespace fluxbatch::tokenizers::unicode
