// `fluxbatch inspect MODEL`: what a model path holds, read from file headers only.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace fluxbatch::app {

struct InspectCommand {
  std::string model;
  bool json = false;
};

CLI::App* add_inspect_command(CLI::App& app, InspectCommand& command);

// Prints the report to stdout; ModelError when the path is not a usable FLUX model.
void run_inspect(const InspectCommand& command);

}  // namespace fluxbatch::app
