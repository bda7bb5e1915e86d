#include "job/text_util.h"

#include <cstdio>

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job::detail {
namespace {

// Length of the well-formed UTF-8 sequence starting at text[i], or 0 when it is ill-formed.
size_t utf8_sequence_length(std::string_view text, size_t i, uint32_t* code_point) {
  const auto lead = static_cast<unsigned char>(text[i]);
  if (lead < 0x80) {
    *code_point = lead;
    return 1;
  }
  size_t length = 0;
  uint32_t cp = 0;
  uint32_t min = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, cp = lead & 0x1F, min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, cp = lead & 0x0F, min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, cp = lead & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (text.size() - i < length) return 0;
  for (size_t k = 1; k < length; ++k) {
    const auto byte = static_cast<unsigned char>(text[i + k]);
    if ((byte & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  *code_point = cp;
  return length;
}

bool is_forbidden_control(uint32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F);
}

std::string hex_code_point(uint32_t cp) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "U+%04X", static_cast<unsigned>(cp));
  return buffer;
}

}  // namespace

size_t find_invalid_utf8(std::string_view text) {
  size_t i = 0;
  uint32_t cp = 0;
  while (i < text.size()) {
    const size_t length = utf8_sequence_length(text, i, &cp);
    if (length == 0) return i;
    i += length;
  }
  return kNoOffset;
}

std::string prompt_problem(std::string_view prompt) {
  if (prompt.find_first_not_of(" \t\r\n") == std::string_view::npos) return "must not be empty";
  if (prompt.size() > kMaxPromptBytes) {
    return "is " + std::to_string(prompt.size()) + " bytes long; the limit is " +
           std::to_string(kMaxPromptBytes);
  }
  size_t i = 0;
  uint32_t cp = 0;
  while (i < prompt.size()) {
    const size_t length = utf8_sequence_length(prompt, i, &cp);
    if (length == 0) {
      char byte[8];
      std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned char>(prompt[i]));
      return std::string("is not valid UTF-8 (bad byte ") + byte + " at byte " +
             std::to_string(i + 1) + ")";
    }
    if (is_forbidden_control(cp)) {
      return "contains the control character " + hex_code_point(cp) +
             " (tab and newline are the only ones allowed)";
    }
    i += length;
  }
  return "";
}

PositionCursor::Position PositionCursor::at(size_t offset) {
  if (offset > text_.size()) offset = text_.size();
  if (offset < offset_) {
    offset_ = 0;
    position_ = Position{};
  }
  for (; offset_ < offset; ++offset_) {
    const auto c = static_cast<unsigned char>(text_[offset_]);
    if (c == '\n') {
      ++position_.line;
      position_.column = 1;
    } else if ((c & 0xC0) != 0x80) {
      ++position_.column;  // continuation bytes belong to the character already counted
    }
  }
  return position_;
}

std::string truncate_utf8(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return std::string(text.substr(0, cut)) + "...";
}

}  // namespace fluxbatch::job::detail
