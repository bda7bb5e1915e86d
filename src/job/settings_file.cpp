// Settings presets: the same scanner, diagnostics and parameter rules as job files.
#include "fluxbatch/job/settings_file.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "job/diagnostics.h"
#include "job/json_scan.h"
#include "job/param_rules.h"
#include "job/suggest.h"
#include "job/text_util.h"

namespace fluxbatch::job {
namespace {

namespace fs = std::filesystem;
using detail::DiagnosticSink;
using detail::kNoOffset;
using nlohmann::json;

const std::vector<std::string> kRootKeys = {"description", "render", "defaults"};
const std::vector<std::string> kParamKeys = {"width", "height", "steps", "guidance",
                                             "seed", "count", "max_sequence_length"};

std::string one_of(const std::string& value, const std::vector<std::string>& allowed) {
  for (const std::string& a : allowed) {
    if (value == a) return "";
  }
  std::string list;
  for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
  return "expected one of " + list + ", got \"" + value + "\"";
}

std::string device_problem(const std::string& value) {
  if (value == "cpu" || value == "cuda") return "";
  if (value.rfind("cuda:", 0) == 0 && value.size() > 5 && value.size() < 9 &&
      value.find_first_not_of("0123456789", 5) == std::string::npos) {
    return "";
  }
  return "expected cuda, cuda:N or cpu, got \"" + value + "\"";
}

// A setting's value as text, or a problem. Strings stay strings; numbers are written back compactly.
struct Read {
  std::string value, problem;
};

Read read_string(const json& v, const std::function<std::string(const std::string&)>& check) {
  if (!v.is_string()) return {"", "expected a string, got " + detail::describe(v)};
  const std::string s = v.get<std::string>();
  return {s, check(s)};
}

Read read_integer(const json& v, long long lo, long long hi) {
  if (!v.is_number_integer()) {
    return {"", "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " +
                    detail::describe(v)};
  }
  const long long n = v.get<long long>();
  if (n < lo || n > hi) {
    return {"", "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " +
                    std::to_string(n)};
  }
  return {std::to_string(n), ""};
}

Read read_number(const json& v, double lo, double hi) {
  std::ostringstream range;
  range << "expected a number from " << lo << " to " << hi;
  if (!v.is_number()) return {"", range.str() + ", got " + detail::describe(v)};
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) return {"", range.str() + ", got " + v.dump()};
  std::ostringstream text;
  text << x;
  return {text.str(), ""};
}

Read read_render(const std::string& key, const json& v) {
  if (key == "device") return read_string(v, device_problem);
  if (key == "dtype") return read_string(v, [](const std::string& s) { return one_of(s, {"bf16", "fp16", "fp32"}); });
  if (key == "quantize") return read_string(v, [](const std::string& s) { return one_of(s, {"none", "nf4"}); });
  if (key == "offload") {
    return read_string(v, [](const std::string& s) { return one_of(s, {"auto", "on", "off", "stream"}); });
  }
  if (key == "vae_tiles") {  // runtime::parse_vae_tiles' forms
    if (v.is_number_integer()) return read_integer(v, 64, 4096);
    return read_string(v, [](const std::string& s) {
      if (s == "auto" || s == "off" || s == "on") return std::string();
      std::string digits = s.size() > 2 && s.compare(s.size() - 2, 2, "px") == 0 ? s.substr(0, s.size() - 2) : s;
      const bool numeric = !digits.empty() && digits.size() <= 4 &&
                           std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c); });
      const int pixels = numeric ? std::stoi(digits) : 0;
      if (pixels >= 64 && pixels <= 4096 && pixels % 8 == 0) return std::string();
      return "expected \"auto\", \"off\", \"on\" or a tile edge in pixels (a multiple of 8 from 64 to 4096), got \"" +
             s + "\"";
    });
  }
  if (key == "progress") {
    return read_string(v, [](const std::string& s) { return one_of(s, {"auto", "bar", "log", "json", "none"}); });
  }
  if (key == "batch") {
    if (v.is_number_integer()) return read_integer(v, 1, 64);
    return read_string(v, [](const std::string& s) {
      return s == "auto" ? std::string() : "expected \"auto\" or an integer from 1 to 64, got \"" + s + "\"";
    });
  }
  if (key == "vram_budget" || key == "vram_reserve" || key == "cache_max") {
    if (v.is_number_integer() && v.get<long long>() > 0) return {std::to_string(v.get<long long>()), ""};
    return read_string(v, size_problem);
  }
  if (key == "monitor_interval") return read_integer(v, 0, 60000);
  if (key == "monitor_threshold") return read_number(v, 0.01, 1.0);
  if (key == "write_threads") return read_integer(v, 0, 64);
  if (key == "progress_interval") return read_number(v, 0.1, 86400.0);
  if (key == "cache") {
    return read_string(v, [](const std::string& s) { return s.empty() ? std::string("expected a non-empty path") : ""; });
  }
  return {"", "unknown setting"};
}

std::string unknown(const std::string& key, const std::vector<std::string>& known) {
  const std::string guess = detail::closest_match(key, known);
  if (!guess.empty()) return "unknown field (did you mean \"" + guess + "\"?)";
  std::string list;
  for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
  return "unknown field; known fields here: " + list;
}

class Parser {
 public:
  Parser(std::string_view text, const std::string& path, DiagnosticSink& sink)
      : text_(text), path_(path), sink_(sink) {}

  RenderSettings run() {
    RenderSettings out;
    out.path = path_;
    out.name = fs::path(path_).stem().string();
    if (const size_t bad = detail::find_invalid_utf8(text_); bad != kNoOffset) {
      sink_.add(bad, "", "invalid UTF-8; settings files must be UTF-8");
      return out;
    }
    if (auto issue = detail::prescan_json(text_, 16, 10000)) {
      sink_.add(issue->offset, "", issue->message);
      return out;
    }
    json root;
    try {
      root = json::parse(text_.begin(), text_.end(), nullptr, true, /*ignore_comments=*/true);
    } catch (const json::exception& e) {
      const auto* parse = dynamic_cast<const json::parse_error*>(&e);
      const size_t at = parse != nullptr && parse->byte > 0 ? std::min<size_t>(parse->byte - 1, text_.size()) : 0;
      std::string message = e.what();
      if (const size_t colon = message.find(": ", message.find("column")); colon != std::string::npos) {
        message = message.substr(colon + 2);
      }
      sink_.add(at, "", "syntax error: " + message);
      return out;
    }
    const size_t offset = detail::skip_whitespace(text_, 0);
    if (!root.is_object()) {
      sink_.add(offset, "", "expected a JSON object with \"render\" and/or \"defaults\", got " + detail::describe(root));
      return out;
    }
    members(root, offset, "", kRootKeys, [&](const detail::Member& m, const json& v, const std::string& field) {
      if (m.key == "description") {
        if (!v.is_string()) return sink_.add(m.value_offset, field, "expected a string, got " + detail::describe(v));
        out.description = v.get<std::string>();
      } else if (m.key == "render") {
        if (!v.is_object()) return sink_.add(m.value_offset, field, "expected an object of render options, got " + detail::describe(v));
        members(v, m.value_offset, "render", render_setting_keys(),
                [&](const detail::Member& r, const json& rv, const std::string& rfield) {
                  Read read = read_render(r.key, rv);
                  if (!read.problem.empty()) return sink_.add(r.value_offset, rfield, read.problem);
                  if (r.key == "cache" && !fs::path(read.value).is_absolute()) {
                    read.value = (fs::path(path_).parent_path() / read.value).lexically_normal().string();
                  }
                  out.render[r.key] = read.value;
                });
      } else {
        if (!v.is_object()) return sink_.add(m.value_offset, field, "expected an object of settings, got " + detail::describe(v));
        members(v, m.value_offset, "defaults", kParamKeys,
                [&](const detail::Member& d, const json& dv, const std::string& dfield) {
                  const std::string problem = detail::read_param(d.key, dv, &out.defaults);
                  if (!problem.empty()) sink_.add(d.value_offset, dfield, problem);
                });
      }
    });
    if (out.defaults.random_seed) {
      sink_.add(kNoOffset, "defaults.seed", "\"random\" is not allowed in a preset; give a number");
    }
    return out;
  }

 private:
  template <typename Handle>
  void members(const json& object, size_t offset, const std::string& parent, const std::vector<std::string>& known,
               Handle handle) {
    std::set<std::string> seen;
    for (const detail::Member& m : detail::object_members(text_, offset)) {
      const std::string field = detail::field_path(parent, m.key);
      if (!seen.insert(m.key).second) {
        sink_.add(m.key_offset, field, "duplicate field; each field may appear once");
      } else if (std::find(known.begin(), known.end(), m.key) == known.end()) {
        sink_.add(m.key_offset, field, unknown(m.key, known));
      } else {
        handle(m, object.at(m.key), field);
      }
    }
  }

  std::string_view text_;
  std::string path_;
  DiagnosticSink& sink_;
};

}  // namespace

const std::vector<std::string>& render_setting_keys() {
  static const std::vector<std::string> keys = {
      "device",         "dtype",           "quantize",      "batch",         "offload",
      "vram_budget",    "vram_reserve",    "monitor_interval", "monitor_threshold", "write_threads",
      "progress",       "progress_interval", "cache",       "cache_max",     "vae_tiles"};
  return keys;
}

std::string size_problem(const std::string& text) {
  const std::string bad = "expected a size such as 512M, 1.5G or 2GiB, got \"" + text + "\"";
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) {
    ++digits;
  }
  if (digits == 0 || std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(digits), '.') > 1) return bad;
  const double value = std::strtod(text.substr(0, digits).c_str(), nullptr);
  std::string unit = text.substr(digits);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() == 3 && unit.substr(1) == "IB") unit = unit.substr(0, 1);
  if (unit.size() == 2 && unit[1] == 'B') unit = unit.substr(0, 1);
  if (!(unit.empty() || unit == "B" || unit == "K" || unit == "M" || unit == "G" || unit == "T")) return bad;
  if (!(value > 0.0) || !std::isfinite(value)) return bad;
  return "";
}

RenderSettings parse_settings(std::string_view text, const std::string& path) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  DiagnosticSink sink(path, text, /*columns=*/true);
  RenderSettings out = Parser(text, path, sink).run();
  if (!sink.empty()) throw JobError(sink.finish());
  return out;
}

RenderSettings load_settings(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw JobError({Diagnostic{path, 0, 0, "", "cannot read the settings file: no such file"}});
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) {
    throw JobError({Diagnostic{path, 0, 0, "", std::string("cannot read the settings file: ") + std::strerror(errno)}});
  }
  const std::string bytes = text.str();
  if (bytes.size() > (size_t{1} << 20)) throw JobError({Diagnostic{path, 0, 0, "", "larger than 1 MiB: not a preset"}});
  return parse_settings(bytes, path);
}

std::string find_settings(const std::string& spec, const std::string& base, const std::vector<std::string>& search_dirs,
                          const std::string& what) {
  const bool file = spec.find('/') != std::string::npos || fs::path(spec).extension() == ".json";
  if (file) {
    const fs::path p(spec);
    return p.is_absolute() || base.empty() ? p.string() : (fs::path(base) / p).lexically_normal().string();
  }
  std::string looked, found;
  std::set<std::string> names;
  for (const std::string& dir : search_dirs) {
    if (dir.empty()) continue;
    const fs::path candidate = fs::path(dir) / (spec + ".json");
    std::error_code ec;
    if (fs::is_regular_file(candidate, ec)) return candidate.string();
    looked += (looked.empty() ? "" : ", ") + dir;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".json") names.insert(it->path().stem().string());
    }
  }
  std::string known;
  for (const std::string& n : names) known += (known.empty() ? "" : ", ") + n;
  const std::string guess = detail::closest_match(spec, std::vector<std::string>(names.begin(), names.end()));
  throw InputError(what + ": no preset named \"" + spec + "\"" +
                   (guess.empty() ? "" : " (did you mean \"" + guess + "\"?)") + "; looked in " +
                   (looked.empty() ? std::string("no directory") : looked) +
                   (known.empty() ? "" : "; presets there: " + known));
}

}  // namespace fluxbatch::job
