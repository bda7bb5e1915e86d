// Small helpers shared by the [job] tests.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job::test {

// Options with a deterministic "random" seed source: 1000, 1001, ...
inline LoadOptions fixed_seed_options() {
  LoadOptions options;
  auto next = std::make_shared<uint64_t>(1000);
  options.seed_source = [next] { return (*next)++; };
  return options;
}

// The diagnostics of parsing `text` as `path`, one string each; empty when it loads.
inline std::vector<std::string> problems(const std::string& text, const std::string& path = "job.json",
                                         const LoadOptions& options = fixed_seed_options()) {
  try {
    parse_job(text, path, options);
  } catch (const JobError& error) {
    std::vector<std::string> lines;
    for (const auto& diagnostic : error.diagnostics()) lines.push_back(diagnostic.to_string());
    return lines;
  }
  return {};
}

inline std::string data_path(const std::string& name) {
  return std::string(FLUXBATCH_TEST_DATA) + "/jobs/" + name;
}

}  // namespace fluxbatch::job::test

#include <fstream>
#include <sstream>

namespace fluxbatch::job::test {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline std::vector<std::string> problems_of_file(const std::string& path,
                                                 const LoadOptions& options = {}) {
  try {
    load_job(path, options);
  } catch (const JobError& error) {
    std::vector<std::string> lines;
    for (const auto& diagnostic : error.diagnostics()) lines.push_back(diagnostic.to_string());
    return lines;
  }
  return {};
}

}  // namespace fluxbatch::job::test
