// Speed options of render: which kernels run the transformer's glue between its GEMMs, and whether the
// denoising step is replayed as a CUDA graph. Both change only how fast a step runs on CUDA; the CPU
// always runs the reference composition, eagerly.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "fluxbatch/runtime/execution/flux_generator.h"

namespace fluxbatch::app {

struct SpeedOptions {
  std::string kernels = "fused";  // --kernels fused|reference
  std::string cuda_graphs = "on";  // --cuda-graphs on|off
  std::string compute = "bf16";    // --compute bf16|fp8
};
// `render`: all three; `plan` (graphs: false): --compute only, which changes the weights' size.
void add_speed_options(CLI::App& command, SpeedOptions& options, bool render = true);

// Sets the process-wide kernel mode (ops::set_kernel_mode), options.cuda_graphs and options.compute_fp8;
// logs the choice on CUDA. InputError (exit 2) for values the options do not take and, with
// `check_device`, for --compute fp8 on a device without fp8 GEMMs (compute capability below 8.9, or the
// CPU), before any weights load.
void apply_speed_options(const SpeedOptions& speed, runtime::GeneratorOptions& options, bool check_device = true);

// How the transformer's weights compute, as the calibration cache names it: "", "nf4", "fp8", "nf4+fp8".
std::string weights_tag(bool quantize_nf4, bool compute_fp8);

// "fused" / "reference", and ", fp8 compute" when fp8: what besides device and dtype decides the pixels
// (the image cache's key takes it).
std::string compute_mode_identity(const SpeedOptions& speed);

}  // namespace fluxbatch::app
