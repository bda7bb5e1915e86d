#include "io/manifest_scan.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace fluxbatch::io::detail {
namespace {

class Scanner {
 public:
  explicit Scanner(std::string_view text) : p_(text.data()), end_(text.data() + text.size()) {}

  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\r' || *p_ == '\n')) ++p_;
  }
  bool eat(char c) {
    ws();
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }
  bool peek(char c) {
    ws();
    return p_ < end_ && *p_ == c;
  }
  bool at_end() {
    ws();
    return p_ == end_;
  }

  // A string into `out` (ASCII only; \u escapes below 0x80).
  bool string(std::string& out) {
    out.clear();
    if (!eat('"')) return false;
    while (p_ < end_) {
      const char c = *p_++;
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x80) return false;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p_ >= end_) return false;
      const char e = *p_++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (end_ - p_ < 4) return false;
          unsigned v = 0;
          for (int i = 0; i < 4; ++i) {
            const char h = *p_++;
            v <<= 4;
            if (h >= '0' && h <= '9') v |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') v |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= static_cast<unsigned>(h - 'A' + 10);
            else return false;
          }
          if (v >= 0x80) return false;
          out += static_cast<char>(v);
          break;
        }
        default: return false;
      }
    }
    return false;
  }

  // The text of a JSON number; *integer: it has no fraction or exponent.
  bool number(std::string_view* text, bool* integer) {
    ws();
    const char* start = p_;
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    *integer = true;
    if (p_ < end_ && *p_ == '.') {
      *integer = false;
      ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      *integer = false;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    *text = std::string_view(start, static_cast<size_t>(p_ - start));
    return true;
  }

  bool literal(const char* word) {
    ws();
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
    p_ += n;
    return true;
  }

  // Any value, skipped (strings in it are checked like string()).
  bool skip(int depth = 0) {
    if (depth > 32) return false;
    ws();
    if (p_ >= end_) return false;
    if (*p_ == '"') return string(scratch_);
    if (*p_ == '{' || *p_ == '[') {
      const char close = *p_ == '{' ? '}' : ']';
      const bool object = *p_ == '{';
      ++p_;
      if (eat(close)) return true;
      for (;;) {
        if (object && (!string(scratch_) || !eat(':'))) return false;
        if (!skip(depth + 1)) return false;
        if (eat(close)) return true;
        if (!eat(',')) return false;
      }
    }
    if (*p_ == 't') return literal("true");
    if (*p_ == 'f') return literal("false");
    if (*p_ == 'n') return literal("null");
    std::string_view text;
    bool integer = false;
    return number(&text, &integer);
  }

 private:
  const char* p_;
  const char* end_;
  std::string scratch_;
};

bool to_int64(std::string_view text, int64_t* out) {
  char buf[32];
  if (text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(buf, &end, 10);
  if (errno == ERANGE || *end != '\0') return false;
  *out = v;
  return true;
}

bool to_uint64(std::string_view text, uint64_t* out) {
  if (text.empty() || text[0] == '-') return false;
  char buf[32];
  if (text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(buf, &end, 10);
  if (errno == ERANGE || *end != '\0') return false;
  *out = v;
  return true;
}

bool to_double(std::string_view text, double* out) {
  char buf[64];
  if (text.size() >= sizeof buf) return false;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  char* end = nullptr;
  *out = std::strtod(buf, &end);
  return *end == '\0';
}

bool int_field(Scanner& s, int* out) {
  std::string_view text;
  bool integer = false;
  int64_t v = 0;
  if (!s.number(&text, &integer) || !integer || !to_int64(text, &v)) return false;
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) return false;
  *out = static_cast<int>(v);
  return true;
}

bool double_field(Scanner& s, double* out) {
  std::string_view text;
  bool integer = false;
  return s.number(&text, &integer) && to_double(text, out);
}

enum Field : uint32_t {
  kIndex = 1u << 0, kName = 1u << 1, kCopy = 1u << 2, kPrompt = 1u << 3, kSeed = 1u << 4, kWidth = 1u << 5,
  kHeight = 1u << 6, kSteps = 1u << 7, kGuidance = 1u << 8, kMsl = 1u << 9, kModel = 1u << 10, kFile = 1u << 11,
  kStatus = 1u << 12, kError = 1u << 13, kTimings = 1u << 14, kBatch = 1u << 15, kFinished = 1u << 16,
  kCached = 1u << 17, kEventKey = 1u << 18,
};
constexpr uint32_t kRequired = (1u << 17) - 1;

}  // namespace

ScanResult scan_manifest_line(std::string_view line, ManifestEntry& e) {
  Scanner s(line);
  if (!s.eat('{')) return ScanResult::kDeclined;
  uint32_t seen = 0;
  std::string key, status;
  e.cached = false;
  const auto once = [&seen](uint32_t f) {
    if (seen & f) return false;
    seen |= f;
    return true;
  };
  if (!s.eat('}')) {
    for (;;) {
      if (!s.string(key) || !s.eat(':')) return ScanResult::kDeclined;
      bool ok = true;
      if (key == "index") {
        std::string_view text;
        bool integer = false;
        ok = once(kIndex) && s.number(&text, &integer) && integer && to_int64(text, &e.index);
      } else if (key == "name") {
        ok = once(kName) && s.string(e.name);
      } else if (key == "copy") {
        ok = once(kCopy) && int_field(s, &e.copy);
      } else if (key == "prompt") {
        ok = once(kPrompt) && s.string(e.prompt);
      } else if (key == "seed") {
        std::string_view text;
        bool integer = false;
        ok = once(kSeed) && s.number(&text, &integer) && integer && to_uint64(text, &e.seed);
      } else if (key == "width") {
        ok = once(kWidth) && int_field(s, &e.width);
      } else if (key == "height") {
        ok = once(kHeight) && int_field(s, &e.height);
      } else if (key == "steps") {
        ok = once(kSteps) && int_field(s, &e.steps);
      } else if (key == "guidance") {
        ok = once(kGuidance) && double_field(s, &e.guidance);
      } else if (key == "max_sequence_length") {
        ok = once(kMsl) && int_field(s, &e.max_sequence_length);
      } else if (key == "model") {
        ok = once(kModel) && s.string(e.model);
      } else if (key == "file") {
        ok = once(kFile) && s.string(e.file);
      } else if (key == "status") {
        ok = once(kStatus) && s.string(status) && (status == "ok" || status == "failed");
        e.status = status == "ok" ? ManifestStatus::kOk : ManifestStatus::kFailed;
      } else if (key == "error") {
        ok = once(kError) && s.string(e.error);
      } else if (key == "timings") {
        ok = once(kTimings) && s.eat('{');
        uint32_t timings = 0;
        if (ok && !s.eat('}')) {
          for (;;) {
            std::string name;
            if (!s.string(name) || !s.eat(':')) return ScanResult::kDeclined;
            if (name == "generate_s" && !(timings & 1)) {
              timings |= 1;
              if (!double_field(s, &e.timings.generate_s)) return ScanResult::kDeclined;
            } else if (name == "write_s" && !(timings & 2)) {
              timings |= 2;
              if (!double_field(s, &e.timings.write_s)) return ScanResult::kDeclined;
            } else if (name == "generate_s" || name == "write_s" || !s.skip()) {
              return ScanResult::kDeclined;
            }
            if (s.eat('}')) break;
            if (!s.eat(',')) return ScanResult::kDeclined;
          }
        }
        ok = ok && timings == 3;
      } else if (key == "batch_size") {
        ok = once(kBatch) && int_field(s, &e.batch_size);
      } else if (key == "finished_at") {
        ok = once(kFinished) && s.string(e.finished_at);
      } else if (key == "cached") {
        ok = once(kCached);
        if (ok && s.peek('t')) {
          ok = s.literal("true");
          e.cached = true;
        } else if (ok && s.peek('f')) {
          ok = s.literal("false");
        } else {
          ok = ok && s.skip();  // not a boolean: ignored, as the full parser does
        }
      } else if (key == "event") {
        ok = once(kEventKey) && s.skip();
      } else if (key == "loras") {
        return ScanResult::kDeclined;  // LoRA records: the full parser reads them (resume compares them)
      } else {
        ok = s.skip();  // a field this version does not know
      }
      if (!ok) return ScanResult::kDeclined;
      if (s.eat('}')) break;
      if (!s.eat(',')) return ScanResult::kDeclined;
    }
  }
  if (!s.at_end()) return ScanResult::kDeclined;
  if (seen & kEventKey) return ScanResult::kEvent;
  return (seen & kRequired) == kRequired ? ScanResult::kEntry : ScanResult::kDeclined;
}

}  // namespace fluxbatch::io::detail
