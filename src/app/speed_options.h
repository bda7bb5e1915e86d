// Speed options of render: which kernels run the transformer's glue between its GEMMs, and whether the
// denoising step is replayed as a CUDA graph (both change only how fast a step runs on CUDA; the CPU
// always runs the reference composition, eagerly), and the arithmetic of its GEMMs and attention (which
// changes the pixels: the PNG, the manifest and the caches record it).
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "fluxbatch/runtime/execution/flux_generator.h"

namespace fluxbatch::app {

struct SpeedOptions {
  std::string kernels = "fused";  // --kernels fused|reference
  std::string cuda_graphs = "on";  // --cuda-graphs on|off
  std::string compute = "bf16";    // --compute bf16|fp8
  std::string attention = "bf16";  // --attention bf16|fp8 (fp8 needs --compute fp8)
};
// `render`: all four; `plan` (render: false): --compute, which changes the weights' size, and --attention,
// which changes the activations' (the calibration cache tells the modes apart).
void add_speed_options(CLI::App& command, SpeedOptions& options, bool render = true);

// Sets the process-wide kernel mode (ops::set_kernel_mode), options.cuda_graphs, options.compute_fp8 and
// options.attention_fp8; logs the choice on CUDA. InputError (exit 2) for values the options do not take,
// for --attention fp8 without --compute fp8 and, with `check_device`, for --compute fp8 on a device
// without fp8 GEMMs (compute capability below 8.9, or the CPU) or --attention fp8 on one without cuDNN's
// fp8 attention (below 9.0, or a build without cuDNN's frontend), before any weights load.
void apply_speed_options(const SpeedOptions& speed, runtime::GeneratorOptions& options, bool check_device = true);

// Whether --attention asks for fp8; InputError (exit 2) for a value other than bf16 / fp8, and for fp8
// without --compute fp8. No device check (`plan` plans for devices it may not run on).
bool attention_fp8(const SpeedOptions& speed);

// How the transformer computes, as the calibration cache names it (its weights' and activations' size
// depend on it): "", "nf4", "fp8", "nf4+fp8", and "+fp8attn" after fp8 for fp8 attention ("fp8+fp8attn",
// "nf4+fp8+fp8attn"). Without fp8 attention the tags are those of earlier versions, so their
// calibrations still apply.
std::string calibration_tag(bool quantize_nf4, bool compute_fp8, bool attention_fp8);

// "fused" / "reference", then ", fp8 compute" and ", fp8 attention" when on: what besides device and dtype
// decides the pixels (the image cache's key takes it).
std::string compute_mode_identity(const SpeedOptions& speed);

}  // namespace fluxbatch::app
