// Speed options of render: which kernels run the transformer's glue between its GEMMs, and whether the
// denoising step is replayed as a CUDA graph. Both change only how fast a step runs on CUDA; the CPU
// always runs the reference composition, eagerly.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "fluxbatch/runtime/flux_generator.h"

namespace fluxbatch::app {

struct SpeedOptions {
  std::string kernels = "fused";  // --kernels fused|reference
  std::string cuda_graphs = "on";  // --cuda-graphs on|off
};
void add_speed_options(CLI::App& command, SpeedOptions& options);

// Sets the process-wide kernel mode (ops::set_kernel_mode) and options.cuda_graphs; logs the choice on
// CUDA. InputError for values the option does not take.
void apply_speed_options(const SpeedOptions& speed, runtime::GeneratorOptions& options);

}  // namespace fluxbatch::app
