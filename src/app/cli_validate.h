// `fluxbatch validate JOB...`: checks job files without loading a model.
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "cli_common.h"

namespace fluxbatch::app {

struct ValidateCommand {
  std::vector<std::string> files;
  bool json = false;
  JobOptions job;
};

CLI::App* add_validate_command(CLI::App& app, ValidateCommand& command);

// Prints a line per valid file (or, with --json, the expanded items) to stdout and every
// diagnostic of every invalid file to stderr; throws InputError when any file is invalid.
void run_validate(const ValidateCommand& command);

}  // namespace fluxbatch::app
