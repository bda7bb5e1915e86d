// PNG encoding (stb_image_write) plus the text chunks stb cannot write itself.
#include "fluxbatch/io/png_writer.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/atomic_file.h"

// Static linkage keeps stb's symbols private to this file, so another TU may embed stb too.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace fluxbatch::io {
namespace {

constexpr std::string_view kSignature("\x89PNG\r\n\x1a\n", 8);
constexpr size_t kIhdrEnd = 8 + 4 + 4 + 13 + 4;  // signature + IHDR (length, type, data, crc)

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1U) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  return table;
}

void put_u32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xFF));
  out.push_back(static_cast<char>((v >> 16) & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
  out.push_back(static_cast<char>(v & 0xFF));
}

uint32_t get_u32(std::string_view bytes, size_t at) {
  return (uint32_t(uint8_t(bytes[at])) << 24) | (uint32_t(uint8_t(bytes[at + 1])) << 16) |
         (uint32_t(uint8_t(bytes[at + 2])) << 8) | uint32_t(uint8_t(bytes[at + 3]));
}

bool is_ascii(std::string_view s) {
  for (const char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

void check_text(const PngText& t) {
  const bool bad_key = t.key.empty() || t.key.size() > 79 || t.key.front() == ' ' || t.key.back() == ' ' ||
                       t.key.find_first_not_of(
                           " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                           "abcdefghijklmnopqrstuvwxyz{|}~") != std::string::npos;
  if (bad_key) throw OutputError("PNG text key '" + t.key + "' is not 1-79 printable ASCII characters");
  if (t.text.find('\0') != std::string::npos) {
    throw OutputError("PNG text '" + t.key + "' contains a NUL byte");
  }
}

// tEXt: key NUL text.  iTXt: key NUL compression-flag(0) method(0) language NUL translated-key NUL text.
std::string text_chunk(const PngText& t) {
  check_text(t);
  const bool plain = is_ascii(t.text);
  std::string body = plain ? "tEXt" : "iTXt";
  body += t.key;
  body.push_back('\0');
  if (!plain) body.append(std::string("\0\0\0\0\0", 4));  // flag, method, empty language, empty translation
  body += t.text;
  std::string chunk;
  put_u32(chunk, static_cast<uint32_t>(body.size() - 4));
  chunk += body;
  put_u32(chunk, crc32(body));
  return chunk;
}

}  // namespace

std::string encode_plain_png(int width, int height, const std::vector<uint8_t>& rgb) {
  if (width <= 0 || height <= 0 || rgb.size() != size_t(width) * size_t(height) * 3) {
    throw OutputError("cannot encode a PNG of " + std::to_string(width) + "x" + std::to_string(height) +
                      " from " + std::to_string(rgb.size()) + " RGB bytes");
  }
  int length = 0;
  std::unique_ptr<unsigned char, decltype(&std::free)> png(
      stbi_write_png_to_mem(rgb.data(), width * 3, width, height, 3, &length), &std::free);
  if (!png || length < static_cast<int>(kIhdrEnd)) throw OutputError("the PNG encoder failed (out of memory?)");
  return std::string(reinterpret_cast<const char*>(png.get()), static_cast<size_t>(length));
}

namespace {

// Shortest decimal that reads back as the same double, like Python's repr but without ".0".
std::string format_number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<long long>(v));
  }
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out + "\"";
}

// WebUI's infotext_utils.quote(): only values that would break the "k: v, k: v" syntax are quoted.
std::string infotext_quote(const std::string& value) {
  if (value.find_first_of(",:\n") == std::string::npos) return value;
  return json_quote(value);
}

}  // namespace

uint32_t crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = 0xFFFFFFFFU;
  for (const char b : bytes) c = table[(c ^ static_cast<uint8_t>(b)) & 0xFFU] ^ (c >> 8);
  return c ^ 0xFFFFFFFFU;
}

std::string add_png_text(std::string_view png, const std::vector<PngText>& text) {
  if (png.size() < kIhdrEnd + 12 || png.substr(0, kSignature.size()) != kSignature ||
      png.substr(kSignature.size() + 4, 4) != "IHDR") {
    throw InputError("not a PNG file (no signature and IHDR chunk)");
  }
  std::string out(png.substr(0, kIhdrEnd));
  for (const PngText& t : text) out += text_chunk(t);
  out.append(png.substr(kIhdrEnd));
  return out;
}

std::string encode_png(int width, int height, const std::vector<uint8_t>& rgb, const std::vector<PngText>& text) {
  return add_png_text(encode_plain_png(width, height, rgb), text);
}

void write_png_atomic(const std::string& path, int width, int height, const std::vector<uint8_t>& rgb,
                      const std::vector<PngText>& text, bool replace_existing) {
  std::string png;
  try {
    png = encode_png(width, height, rgb, text);
  } catch (const OutputError& e) {
    throw OutputError("cannot write " + path + ": " + e.what());
  }
  write_file_atomic(path, png, replace_existing);
}

std::vector<PngText> read_png_text(std::string_view png) {
  if (png.substr(0, kSignature.size()) != kSignature) throw InputError("not a PNG file (bad signature)");
  std::vector<PngText> out;
  size_t at = kSignature.size();
  while (at + 12 <= png.size()) {
    const uint32_t length = get_u32(png, at);
    if (length > png.size() - at - 12) throw InputError("truncated PNG chunk at byte " + std::to_string(at));
    const std::string_view body = png.substr(at + 4, 4 + length);
    const std::string type(body.substr(0, 4));
    if (crc32(body) != get_u32(png, at + 8 + length)) throw InputError("bad CRC in PNG chunk " + type);
    const std::string_view data = body.substr(4);
    const size_t nul = data.find('\0');
    if (type == "tEXt" && nul != std::string_view::npos) {
      out.push_back({std::string(data.substr(0, nul)), std::string(data.substr(nul + 1))});
    } else if (type == "iTXt" && nul != std::string_view::npos && nul + 2 < data.size() && data[nul + 1] == 0) {
      const size_t lang_end = data.find('\0', nul + 3);
      const size_t trans_end = lang_end == std::string_view::npos ? lang_end : data.find('\0', lang_end + 1);
      if (trans_end == std::string_view::npos) throw InputError("malformed iTXt chunk");
      out.push_back({std::string(data.substr(0, nul)), std::string(data.substr(trans_end + 1))});
    }
    if (type == "IEND") return out;
    at += 12 + length;
  }
  throw InputError("truncated PNG (no IEND chunk)");
}

std::string a1111_parameters(const InfotextParams& p) {
  // FLUX.1-dev has no classifier-free guidance: Forge records CFG scale 1 and the distilled
  // guidance separately.
  std::string prompt = p.prompt, hashes;
  for (const InfotextLora& lora : p.loras) {
    prompt += " <lora:" + lora.name + ":" + format_number(lora.scale) + ">";
    if (!lora.short_hash.empty()) hashes += (hashes.empty() ? "" : ", ") + lora.name + ": " + lora.short_hash;
  }
  if (!hashes.empty()) hashes = ", Lora hashes: " + infotext_quote(hashes);
  return prompt + "\nSteps: " + std::to_string(p.steps) + ", Sampler: Euler, Schedule type: Simple" +
         ", CFG scale: 1, Distilled CFG Scale: " + format_number(p.guidance) + ", Seed: " + std::to_string(p.seed) +
         ", Size: " + std::to_string(p.width) + "x" + std::to_string(p.height) +
         (p.model.empty() ? std::string() : ", Model: " + infotext_quote(p.model)) + hashes + ", Version: " + infotext_quote("fluxbatch " FLUXBATCH_VERSION);
}

}  // namespace fluxbatch::io
