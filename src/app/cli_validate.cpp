// validate: load every file, report all problems of all files, then fail once.
#include "cli_validate.h"

#include <cstdio>
#include <set>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::app {
namespace {

constexpr const char* kFooter =
    "Examples:\n"
    "  fluxbatch validate jobs/night.json\n"
    "      check one job file; prints what it expands to\n"
    "  fluxbatch validate jobs/*.json prompts.txt\n"
    "      check several files; every problem of every file is listed (file:line:col field: message)\n"
    "  fluxbatch validate --json jobs/night.json > items.json\n"
    "      print the expanded render items (one per image, in render order) as JSON\n"
    "  fluxbatch validate --steps 20 --width 768 prompts.txt\n"
    "      a .txt prompt list takes its settings from these options\n"
    "\n"
    "Exit codes: 0 every file is valid, 2 some file is invalid.\n";

std::string describe(const job::JobSpec& spec) {
  std::set<int64_t> sources;
  for (const job::RenderItem& item : spec.items) sources.insert(item.item_index);
  return spec.path + ": ok, " + std::to_string(spec.items.size()) + " image(s) from " +
         std::to_string(sources.size()) + " item(s) -> " + spec.output_dir;
}

}  // namespace

CLI::App* add_validate_command(CLI::App& app, ValidateCommand& command) {
  CLI::App* sub = app.add_subcommand("validate", "Check job files (JSON jobs or .txt prompt lists) without rendering");
  sub->add_option("JOB", command.files, "Job files to check (.json job, .txt prompt list)")->required();
  sub->add_flag("--json", command.json, "Print the expanded render items as JSON (an array when several files)");
  add_job_options(*sub, command.job);
  sub->footer(kFooter);
  return sub;
}

void run_validate(const ValidateCommand& command) {
  const job::LoadOptions options = to_load_options(command.job);
  std::vector<std::string> json;
  size_t invalid = 0;
  for (const std::string& file : command.files) {
    try {
      const job::JobSpec spec = job::load_job(file, options);
      if (command.json) {
        json.push_back(job::job_items_to_json(spec, 2));
      } else {
        std::printf("%s\n", describe(spec).c_str());
      }
    } catch (const InputError& e) {
      ++invalid;
      std::fprintf(stderr, "%s\n", e.what());
    }
  }
  if (command.json && invalid == 0) {
    if (json.size() == 1) {
      std::printf("%s\n", json[0].c_str());
    } else {
      std::printf("[\n");
      for (size_t i = 0; i < json.size(); ++i) std::printf("%s%s\n", json[i].c_str(), i + 1 < json.size() ? "," : "");
      std::printf("]\n");
    }
  }
  std::fflush(stdout);
  if (invalid > 0) {
    throw InputError(std::to_string(invalid) + " of " + std::to_string(command.files.size()) +
                     " job file(s) invalid");
  }
}

}  // namespace fluxbatch::app
