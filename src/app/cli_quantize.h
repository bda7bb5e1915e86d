// `fluxbatch quantize IN OUT`: a dense diffusers FLUX folder -> a bitsandbytes-NF4 one diffusers loads, or
// (--to fp8) its transformer as a ComfyUI-style scaled-fp8 single file.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

namespace fluxbatch::app {

struct QuantizeCommand {
  std::string in;
  std::string out;
  std::string to = "nf4";  // nf4 (a diffusers folder) or fp8 (one scaled-fp8 .safetensors file)
  bool double_quant = false;
  std::string device = "cuda";  // whose bitsandbytes rounding: cuda or cpu
  bool overwrite = false;
};

CLI::App* add_quantize_command(CLI::App& app, QuantizeCommand& command);

// Writes OUT and prints a one-line summary. ModelError for an unusable IN, OutputError for OUT.
void run_quantize(const QuantizeCommand& command);

}  // namespace fluxbatch::app
