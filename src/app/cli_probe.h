// `fluxbatch probe`: total, free and allocator-held memory of every CUDA device.
#pragma once
#include <CLI/CLI.hpp>

namespace fluxbatch::app {

struct ProbeCommand {
  bool json = false;
};

CLI::App* add_probe_command(CLI::App& app, ProbeCommand& command);

// Prints the report; DeviceError (exit 3) when there is no CUDA device.
void run_probe(const ProbeCommand& command);

}  // namespace fluxbatch::app
