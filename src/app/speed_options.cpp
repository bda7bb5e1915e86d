#include "speed_options.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/kernel_mode.h"

namespace fluxbatch::app {

void add_speed_options(CLI::App& command, SpeedOptions& options, bool render) {
  command
      .add_option("--compute", options.compute,
                  "Arithmetic of the transformer's GEMMs: bf16, or fp8 (e4m3 weights with one scale per output "
                  "channel, activations quantized per token; about 1.6x the bf16 GEMM rate on Hopper; needs "
                  "compute capability 8.9+: Ada, Hopper). The PNG and the manifest record it, and a resumed "
                  "job renders again images made in the other mode (default bf16)")
      ->type_name("bf16|fp8")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  if (!render) return;
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

void apply_speed_options(const SpeedOptions& speed, runtime::GeneratorOptions& options, bool check_device) {
  if (speed.kernels != "fused" && speed.kernels != "reference") {
    throw InputError("--kernels: expected fused or reference, got '" + speed.kernels + "'");
  }
  if (speed.cuda_graphs != "on" && speed.cuda_graphs != "off") {
    throw InputError("--cuda-graphs: expected on or off, got '" + speed.cuda_graphs + "'");
  }
  if (speed.compute != "bf16" && speed.compute != "fp8") {
    throw InputError("--compute: expected bf16 or fp8, got '" + speed.compute + "'");
  }
  options.compute_fp8 = speed.compute == "fp8";
  if (options.compute_fp8 && check_device && !ops::fp8_gemm_supported(options.device)) {
    throw InputError("--compute fp8 needs fp8 tensor cores (CUDA compute capability 8.9 or newer: Ada, Hopper); " +
                     options.device.str() + " has none. Use --compute bf16");
  }
  ops::set_kernel_mode(speed.kernels == "fused" ? ops::KernelMode::kFused : ops::KernelMode::kReference);
  options.cuda_graphs = speed.cuda_graphs == "on";
  if (options.device.is_cuda()) {
    log::info(std::string("kernels: ") + speed.kernels + ", CUDA graphs " + speed.cuda_graphs + ", compute " +
              speed.compute);
  }
}

std::string weights_tag(bool quantize_nf4, bool compute_fp8) {
  std::string tag = quantize_nf4 ? "nf4" : "";
  if (compute_fp8) tag += tag.empty() ? "fp8" : "+fp8";
  return tag;
}

std::string compute_mode_identity(const SpeedOptions& speed) {
  return speed.kernels + (speed.compute == "fp8" ? ", fp8 compute" : "");
}

}  // namespace fluxbatch::app
