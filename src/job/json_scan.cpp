#include "job/json_scan.h"

#include <stdexcept>

namespace fluxbatch::job::detail {
namespace {

[[noreturn]] void out_of_sync(size_t pos) {
  throw std::logic_error("job file scanner out of sync at byte " + std::to_string(pos));
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// End of the comment starting at pos ("//" ends before '\n' or '\r', "/*" after "*/"), or pos when
// no comment starts there.
size_t skip_comment(std::string_view text, size_t pos) {
  if (pos + 1 >= text.size() || text[pos] != '/') return pos;
  if (text[pos + 1] == '/') {
    const size_t end = text.find_first_of("\n\r", pos + 2);
    return end == std::string_view::npos ? text.size() : end;
  }
  if (text[pos + 1] == '*') {
    const size_t end = text.find("*/", pos + 2);
    return end == std::string_view::npos ? text.size() : end + 2;
  }
  return pos;
}

// pos at the opening quote; returns the offset after the closing quote (or the end of text).
size_t skip_string(std::string_view text, size_t pos) {
  for (++pos; pos < text.size(); ++pos) {
    if (text[pos] == '\\') {
      ++pos;
    } else if (text[pos] == '"') {
      return pos + 1;
    }
  }
  return text.size();
}

bool ends_scalar(char c) {
  return is_space(c) || c == ',' || c == ']' || c == '}' || c == ':' || c == '/';
}

size_t skip_value(std::string_view text, size_t pos) {
  if (pos >= text.size()) out_of_sync(pos);
  const char first = text[pos];
  if (first == '"') return skip_string(text, pos);
  if (first != '{' && first != '[') {
    while (pos < text.size() && !ends_scalar(text[pos])) ++pos;
    return pos;
  }
  int depth = 0;
  while (pos < text.size()) {
    const char c = text[pos];
    if (c == '"') {
      pos = skip_string(text, pos);
      continue;
    }
    const size_t after_comment = skip_comment(text, pos);
    if (after_comment != pos) {
      pos = after_comment;
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return pos + 1;
    }
    ++pos;
  }
  out_of_sync(pos);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

unsigned read_hex4(std::string_view text, size_t pos) {
  if (pos + 4 > text.size()) out_of_sync(pos);
  unsigned value = 0;
  for (size_t k = 0; k < 4; ++k) {
    const int digit = hex_digit(text[pos + k]);
    if (digit < 0) out_of_sync(pos + k);
    value = value * 16 + static_cast<unsigned>(digit);
  }
  return value;
}

void append_utf8(std::string& out, unsigned cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Decodes the string at pos (opening quote) into out; returns the offset after the closing quote.
size_t decode_string(std::string_view text, size_t pos, std::string* out) {
  if (pos >= text.size() || text[pos] != '"') out_of_sync(pos);
  for (++pos; pos < text.size(); ++pos) {
    const char c = text[pos];
    if (c == '"') return pos + 1;
    if (c != '\\') {
      *out += c;
      continue;
    }
    if (++pos >= text.size()) out_of_sync(pos);
    switch (text[pos]) {
      case 'b': *out += '\b'; break;
      case 'f': *out += '\f'; break;
      case 'n': *out += '\n'; break;
      case 'r': *out += '\r'; break;
      case 't': *out += '\t'; break;
      case 'u': {
        unsigned cp = read_hex4(text, pos + 1);
        pos += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: nlohmann requires the low half
          if (pos + 2 >= text.size() || text[pos + 1] != '\\' || text[pos + 2] != 'u') {
            out_of_sync(pos);
          }
          const unsigned low = read_hex4(text, pos + 3);
          pos += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        append_utf8(*out, cp);
        break;
      }
      default: *out += text[pos]; break;  // '"', '\\', '/'
    }
  }
  out_of_sync(pos);
}

size_t expect(std::string_view text, size_t pos, char c) {
  if (pos >= text.size() || text[pos] != c) out_of_sync(pos);
  return skip_whitespace(text, pos + 1);
}

}  // namespace

std::optional<PrescanIssue> prescan_json(std::string_view text, int max_depth, size_t max_values) {
  int depth = 0;
  size_t values = 0;
  bool in_scalar = false;
  for (size_t pos = 0; pos < text.size();) {
    const char c = text[pos];
    const size_t after_comment = skip_comment(text, pos);
    if (after_comment != pos) {
      pos = after_comment;
      in_scalar = false;
      continue;
    }
    const bool starts_value = c == '"' || c == '{' || c == '[' || (!in_scalar && !ends_scalar(c));
    if (starts_value && ++values > max_values) {
      return PrescanIssue{pos, "more than " + std::to_string(max_values) +
                                   " JSON values; a job file this large is not supported"};
    }
    if (c == '"') {
      pos = skip_string(text, pos);
      in_scalar = false;
      continue;
    }
    if (c == '{' || c == '[') {
      if (++depth > max_depth) {
        return PrescanIssue{pos, "nested deeper than " + std::to_string(max_depth) +
                                     " levels; job files need only 3"};
      }
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
    in_scalar = !ends_scalar(c) && c != '{' && c != '[';
    ++pos;
  }
  return std::nullopt;
}

size_t skip_whitespace(std::string_view text, size_t pos) {
  while (pos < text.size()) {
    if (is_space(text[pos])) {
      ++pos;
      continue;
    }
    const size_t after_comment = skip_comment(text, pos);
    if (after_comment == pos) break;
    pos = after_comment;
  }
  return pos;
}

std::vector<Member> object_members(std::string_view text, size_t pos) {
  std::vector<Member> members;
  pos = expect(text, pos, '{');
  if (pos < text.size() && text[pos] == '}') return members;
  while (true) {
    Member member;
    member.key_offset = pos;
    pos = skip_whitespace(text, decode_string(text, pos, &member.key));
    pos = expect(text, pos, ':');
    member.value_offset = pos;
    pos = skip_whitespace(text, skip_value(text, pos));
    members.push_back(std::move(member));
    if (pos < text.size() && text[pos] == ',') {
      pos = skip_whitespace(text, pos + 1);
      continue;
    }
    expect(text, pos, '}');
    return members;
  }
}

std::vector<size_t> array_elements(std::string_view text, size_t pos) {
  std::vector<size_t> elements;
  pos = expect(text, pos, '[');
  if (pos < text.size() && text[pos] == ']') return elements;
  while (true) {
    elements.push_back(pos);
    pos = skip_whitespace(text, skip_value(text, pos));
    if (pos < text.size() && text[pos] == ',') {
      pos = skip_whitespace(text, pos + 1);
      continue;
    }
    expect(text, pos, ']');
    return elements;
  }
}

}  // namespace fluxbatch::job::detail
