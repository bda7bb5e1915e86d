#include "cli_inspect.h"

#include <cstdio>

#include "fluxbatch/runtime/lora/lora_report.h"
#include "fluxbatch/runtime/model_io/inspect.h"

namespace fluxbatch::app {

CLI::App* add_inspect_command(CLI::App& app, InspectCommand& command) {
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Show a model's layout, variant and, per component, parameters, dtypes, bytes and quantization; or a LoRA "
      "file's format, rank, targets and size");
  cmd->add_option("MODEL", command.model,
                  "A diffusers folder, a directory of BFL/ComfyUI single files, one safetensors file, or a LoRA file")
      ->required();
  cmd->add_flag("--json", command.json, "Print the report as JSON");
  cmd->footer(
      "Only file headers are read: no weights are loaded, so this is fast on any model size.\n"
      "Examples:\n"
      "  fluxbatch inspect /models/FLUX.1-dev\n"
      "  fluxbatch inspect /models/comfyui --json\n"
      "  fluxbatch inspect loras/ink.safetensors      # format, rank, layers, size, hashes\n");
  return cmd;
}

void run_inspect(const InspectCommand& command) {
  const std::string report = runtime::looks_like_lora(command.model) ? runtime::inspect_lora(command.model, command.json)
                                                                       : runtime::inspect_model(command.model, command.json);
  std::fwrite(report.data(), 1, report.size(), stdout);
  if (!report.empty() && report.back() != '\n') std::fputc('\n', stdout);
}

}  // namespace fluxbatch::app
