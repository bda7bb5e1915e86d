// Output file-name templates: parsing, rendering and the checks that keep every name inside the
// output directory.
#include "fluxbatch/job/name_template.h"

#include <cctype>
#include <iterator>

#include "fluxbatch/core/error.h"
#include "job/suggest.h"
#include "job/text_util.h"

namespace fluxbatch::job {
namespace {

constexpr int kSlug = 7;          // index of "slug" in kNamePlaceholders
constexpr int kMaxNumberWidth = 20;  // uint64 has 20 digits
constexpr size_t kMaxNameBytes = 1024;
constexpr size_t kMaxComponentBytes = 255;
constexpr int kPlaceholderCount = static_cast<int>(std::size(kNamePlaceholders));

struct Part {
  std::string literal;    // used when placeholder < 0
  int placeholder = -1;   // index into kNamePlaceholders
  int width = 0;          // zero padding of numbers
  size_t slug_length = kDefaultSlugLength;
};

struct ParsedTemplate {
  std::vector<Part> parts;
  std::string error;
};

std::string known_placeholders() {
  std::string list;
  for (const char* name : kNamePlaceholders) list += (list.empty() ? "{" : ", {") + std::string(name) + "}";
  return list;
}

int placeholder_index(const std::string& name) {
  for (int i = 0; i < kPlaceholderCount; ++i) {
    if (name == kNamePlaceholders[i]) return i;
  }
  return -1;
}

// Parses "digits" into [lo, hi]; -1 when it is not such a number.
int parse_small_number(const std::string& digits, int lo, int hi) {
  if (digits.empty() || digits.size() > 4) return -1;
  int value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    value = value * 10 + (c - '0');
  }
  return value >= lo && value <= hi ? value : -1;
}

// Fills part from "name" or "name:spec"; returns the problem or "".
std::string parse_placeholder(const std::string& body, Part* part) {
  const size_t colon = body.find(':');
  const std::string name = body.substr(0, colon);
  part->placeholder = placeholder_index(name);
  if (part->placeholder < 0) {
    std::vector<std::string> names(std::begin(kNamePlaceholders), std::end(kNamePlaceholders));
    const std::string guess = detail::closest_match(name, names);
    return "unknown placeholder {" + detail::truncate_utf8(name, 40) + "}" +
           (guess.empty() ? "" : " (did you mean {" + guess + "}?)") + "; known: " +
           known_placeholders();
  }
  if (colon == std::string::npos) return "";
  const std::string spec = body.substr(colon + 1);
  if (part->placeholder == kSlug) {
    const int length = parse_small_number(spec, 1, static_cast<int>(kMaxSlugLength));
    if (length < 0) {
      return "bad format in {" + detail::truncate_utf8(body, 40) +
             "}: {slug:N} keeps at most N characters, N from 1 to " + std::to_string(kMaxSlugLength);
    }
    part->slug_length = static_cast<size_t>(length);
    return "";
  }
  const int width = spec.size() >= 2 && spec[0] == '0'
                        ? parse_small_number(spec.substr(1), 1, kMaxNumberWidth)
                        : -1;
  if (width < 0) {
    return "bad format in {" + detail::truncate_utf8(body, 40) + "}: use {" + name +
           ":05} to zero-pad to 5 digits (1 to " + std::to_string(kMaxNumberWidth) + ")";
  }
  part->width = width;
  return "";
}

ParsedTemplate parse_template(const std::string& tmpl) {
  ParsedTemplate parsed;
  std::string literal;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    const bool doubled = i + 1 < tmpl.size() && tmpl[i + 1] == c;
    if ((c == '{' || c == '}') && doubled) {
      literal += c;
      ++i;
      continue;
    }
    if (c == '}') {
      parsed.error = "unmatched '}' (write '}}' for a literal brace)";
      return parsed;
    }
    if (c != '{') {
      literal += c;
      continue;
    }
    const size_t close = tmpl.find('}', i + 1);
    const size_t nested = tmpl.find('{', i + 1);
    if (close == std::string::npos || nested < close) {
      parsed.error = "unclosed '{' (write '{{' for a literal brace)";
      return parsed;
    }
    if (!literal.empty()) parsed.parts.push_back(Part{std::move(literal)});
    literal.clear();
    Part part;
    parsed.error = parse_placeholder(tmpl.substr(i + 1, close - i - 1), &part);
    if (!parsed.error.empty()) return parsed;
    parsed.parts.push_back(part);
    i = close;
  }
  if (!literal.empty()) parsed.parts.push_back(Part{std::move(literal)});
  return parsed;
}

std::string padded(uint64_t value, int width) {
  std::string digits = std::to_string(value);
  if (digits.size() < static_cast<size_t>(width)) digits.insert(0, width - digits.size(), '0');
  return digits;
}

bool has_png_extension(const std::string& name) {
  if (name.size() < 4) return false;
  std::string ext = name.substr(name.size() - 4);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".png";
}

// `numbers` renders number placeholders; `slug` the slug (given its length limit).
template <typename Numbers, typename Slug>
std::string render(const ParsedTemplate& parsed, Numbers numbers, Slug slug) {
  std::string name;
  for (const Part& part : parsed.parts) {
    if (part.placeholder < 0) {
      name += part.literal;
    } else if (part.placeholder == kSlug) {
      name += slug(part.slug_length);
    } else {
      name += padded(numbers(part.placeholder), part.width);
    }
  }
  if (!name.empty() && name.back() != '/' && !has_png_extension(name)) name += ".png";
  return name;
}

// Why `name` is not a safe relative file name inside the output directory, or "".
std::string path_problem(const std::string& name) {
  if (name.empty()) return "the file name is empty";
  if (name.front() == '/') return "must be a relative path inside the output directory, not absolute";
  if (name.back() == '/') return "must end in a file name, not '/'";
  if (name.find('\\') != std::string::npos) return "must not contain '\\'";
  if (detail::find_invalid_utf8(name) != detail::kNoOffset) return "is not valid UTF-8";
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) return "must not contain control characters";
  }
  if (name.size() > kMaxNameBytes) {
    return "file names can be " + std::to_string(name.size()) + " bytes long; the limit is " +
           std::to_string(kMaxNameBytes);
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string::npos) end = name.size();
    const std::string component = name.substr(start, end - start);
    if (component.empty()) return "has an empty path component ('//')";
    if (component == "..") return "must stay inside the output directory ('..' is not allowed)";
    if (component == ".") return "must not contain '.' path components";
    if (component.size() > kMaxComponentBytes) {
      return "a path component can be " + std::to_string(component.size()) +
             " bytes long; the limit is " + std::to_string(kMaxComponentBytes);
    }
    start = end + 1;
  }
  return "";
}

}  // namespace

std::string name_template_error(const std::string& tmpl) {
  if (tmpl.empty()) return "must not be empty";
  const ParsedTemplate parsed = parse_template(tmpl);
  if (!parsed.error.empty()) return parsed.error;
  // Placeholders only produce [0-9a-z-], never empty, so the longest rendering shows every problem
  // any rendering could have.
  const std::string longest = render(
      parsed, [](int) { return uint64_t{18446744073709551615ull}; },
      [](size_t length) { return std::string(length, 'x'); });
  return path_problem(longest);
}

std::string format_name(const std::string& tmpl, const RenderItem& item) {
  const ParsedTemplate parsed = parse_template(tmpl);
  FLUXBATCH_CHECK(parsed.error.empty(), InputError, "name template \"" + tmpl + "\": " + parsed.error);
  auto numbers = [&item](int placeholder) -> uint64_t {
    switch (placeholder) {
      case 0: return static_cast<uint64_t>(item.index);
      case 1: return static_cast<uint64_t>(item.item_index);
      case 2: return static_cast<uint64_t>(item.copy);
      case 3: return item.params.seed;
      case 4: return static_cast<uint64_t>(item.params.width);
      case 5: return static_cast<uint64_t>(item.params.height);
      default: return static_cast<uint64_t>(item.params.steps);
    }
  };
  const std::string name =
      render(parsed, numbers, [&item](size_t length) { return slugify(item.prompt, length); });
  const std::string problem = path_problem(name);
  FLUXBATCH_CHECK(problem.empty(), InputError,
                  "name template \"" + tmpl + "\" gives \"" + name + "\", which " + problem);
  return name;
}

std::string slugify(const std::string& prompt, size_t max_len) {
  if (max_len == 0) max_len = 1;
  std::string slug;
  bool separator = false;
  for (char c : prompt) {
    if (c == '\'') continue;  // "don't" -> "dont", not "don-t"
    if (!std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80) {
      separator = true;
      continue;
    }
    if (separator && !slug.empty()) slug += '-';
    separator = false;
    slug += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (slug.size() > max_len) break;
  }
  if (slug.size() > max_len) {
    const bool mid_word = slug[max_len] != '-';
    slug.resize(max_len);
    const size_t dash = slug.rfind('-');
    if (mid_word && dash != std::string::npos && dash >= max_len / 2) slug.resize(dash);
  }
  while (!slug.empty() && slug.back() == '-') slug.pop_back();
  if (slug.empty()) slug = std::string("prompt").substr(0, max_len);
  return slug;
}

}  // namespace fluxbatch::job
