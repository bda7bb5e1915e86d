#include "cli_probe.h"

#include <cstdio>
#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_probe.h"

namespace fluxbatch::app {

CLI::App* add_probe_command(CLI::App& app, ProbeCommand& command) {
  CLI::App* cmd = app.add_subcommand("probe", "Show each CUDA device's total, free and allocator-held memory");
  cmd->add_flag("--json", command.json, "Print the report as JSON");
  cmd->footer(
      "usable = free + (held by the allocator - in use by tensors): what a render could still take.\n"
      "Exit code 3 when there is no CUDA device.\n");
  return cmd;
}

void run_probe(const ProbeCommand& command) {
  const std::vector<runtime::GpuMemory> gpus = runtime::probe_gpus();
  if (gpus.empty()) {
    throw DeviceError("no CUDA device on this machine (render with --device cpu, or plan with --vram-budget)");
  }
  const std::string report = runtime::format_probe(gpus, command.json);
  std::fwrite(report.data(), 1, report.size(), stdout);
}

}  // namespace fluxbatch::app
