#include "speed_options.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/ops/kernel_mode.h"

namespace fluxbatch::app {

void add_speed_options(CLI::App& command, SpeedOptions& options) {
  command
      .add_option("--kernels", options.kernels,
                  "CUDA kernels between the transformer's GEMMs: fused (LayerNorm + modulation, residual "
                  "updates, q/k RMSNorm + RoPE and GELU each one pass in fp32, about 1.5x faster) or "
                  "reference (diffusers' exact ATen ops: bit-identical to diffusers on the same GPU) "
                  "(default fused)")
      ->type_name("fused|reference")
      ->check(CLI::IsMember({"fused", "reference"}));
  command
      .add_option("--cuda-graphs", options.cuda_graphs,
                  "Replay the denoising step as one CUDA graph from each batch's second step (same results, "
                  "fewer launch gaps; off runs every step eagerly) (default on)")
      ->type_name("on|off")
      ->check(CLI::IsMember({"on", "off"}));
}

void apply_speed_options(const SpeedOptions& speed, runtime::GeneratorOptions& options) {
  if (speed.kernels != "fused" && speed.kernels != "reference") {
    throw InputError("--kernels: expected fused or reference, got '" + speed.kernels + "'");
  }
  if (speed.cuda_graphs != "on" && speed.cuda_graphs != "off") {
    throw InputError("--cuda-graphs: expected on or off, got '" + speed.cuda_graphs + "'");
  }
  ops::set_kernel_mode(speed.kernels == "fused" ? ops::KernelMode::kFused : ops::KernelMode::kReference);
  options.cuda_graphs = speed.cuda_graphs == "on";
  if (options.device.is_cuda()) {
    log::info(std::string("kernels: ") + speed.kernels + ", CUDA graphs " + speed.cuda_graphs);
  }
}

}  // namespace fluxbatch::app
