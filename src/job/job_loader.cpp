// load_job / parse_job: reading, format detection and the order of the checks.
#include "fluxbatch/job/job_loader.h"

#include <cctype>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "fluxbatch/job/name_template.h"
#include "job/diagnostics.h"
#include "job/expand.h"
#include "job/json_job.h"
#include "job/json_scan.h"
#include "job/param_rules.h"
#include "job/prompt_list.h"
#include "job/text_util.h"

namespace fluxbatch::job {
namespace {

namespace fs = std::filesystem;
using detail::DiagnosticSink;
using detail::kNoOffset;

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  Diagnostic diagnostic;
  diagnostic.file = path;
  diagnostic.message = message;
  throw JobError({diagnostic});
}

std::string read_limited(const std::string& path) {
  std::error_code error;
  const auto status = fs::status(path, error);
  if (error || !fs::exists(status)) fail(path, "cannot read the job file: no such file");
  if (fs::is_directory(status)) fail(path, "is a directory, not a job file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open the job file: ") + std::strerror(errno));
  std::string text;
  char buffer[1 << 16];
  // Read at most one byte past the limit: the "file" may be a pipe or /dev/zero.
  while (text.size() <= kMaxJobFileBytes && in.read(buffer, sizeof(buffer)).gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) fail(path, "cannot read the job file: I/O error");
  return text;
}

std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

JobFormat detect_format(std::string_view text, const std::string& path) {
  const std::string ext = lower_extension(path);
  if (ext == ".json") return JobFormat::kJson;
  if (ext == ".txt") return JobFormat::kPromptList;
  const size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && text[first] == '{' ? JobFormat::kJson
                                                               : JobFormat::kPromptList;
}

std::string option_name(const std::string& key) {
  std::string name = "--" + key;
  for (char& c : name) c = c == '_' ? '-' : c;
  return name;
}

void check_options(const LoadOptions& options, DiagnosticSink& sink) {
  detail::check_overrides(options.cli_defaults, [&sink](const std::string& key, const std::string& problem) {
    sink.add_option(option_name(key), problem);
  });
  if (options.output_dir && options.output_dir->empty()) sink.add_option("--out", "must not be empty");
  if (options.name_template) {
    const std::string problem = name_template_error(*options.name_template);
    if (!problem.empty()) sink.add_option("--name", problem);
  }
}

// Structure and fields of a JSON job; false when the text could not be parsed at all.
detail::RawJob read_json(std::string_view text, DiagnosticSink& sink) {
  const size_t bad = detail::find_invalid_utf8(text);
  if (bad != kNoOffset) {
    char byte[8];
    std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned char>(text[bad]));
    sink.add(bad, "", std::string("invalid UTF-8 (byte ") + byte + "); job files must be UTF-8");
    return {};
  }
  if (auto issue = detail::prescan_json(text, kMaxNestingDepth, kMaxJsonValues)) {
    sink.add(issue->offset, "", issue->message);
    return {};
  }
  return detail::parse_json_job(text, sink);
}

}  // namespace

JobSpec parse_job(std::string_view text, const std::string& path, const LoadOptions& options,
                  JobFormat format) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  if (format == JobFormat::kAuto) format = detect_format(text, path);
  DiagnosticSink sink(path, text, format == JobFormat::kJson);
  check_options(options, sink);
  detail::RawJob raw;
  if (text.size() > kMaxJobFileBytes) {
    sink.add(kNoOffset, "", "the file is larger than the limit of " +
                                std::to_string(kMaxJobFileBytes >> 20) + " MiB");
  } else if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    sink.add(kNoOffset, "", "the file is empty");
  } else if (format == JobFormat::kJson) {
    raw = read_json(text, sink);
  } else {
    raw = detail::parse_prompt_list(text, sink);
  }
  JobSpec spec = detail::expand_job(raw, path, options, sink);
  if (!sink.empty()) throw JobError(sink.finish());
  return spec;
}

JobSpec load_job(const std::string& path, const LoadOptions& options) {
  const std::string text = read_limited(path);
  return parse_job(text, path, options, JobFormat::kAuto);
}

}  // namespace fluxbatch::job
