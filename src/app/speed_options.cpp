#include "speed_options.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/ops/fp8_attention.h"
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
  command
      .add_option("--attention", options.attention,
                  "Arithmetic of the transformer's attention: bf16, or fp8 through cuDNN (q, k, v and the output "
                  "in e4m3 with one scale per image, the probabilities rounded to e4m3): faster attention on "
                  "Hopper, where attention is about a third of the transformer's time at 1024x1024, for a small "
                  "extra error. Needs --compute fp8 and compute capability 9.0+ (Hopper). The PNG and the manifest "
                  "record it, and a resumed job renders again images made in the other mode (default bf16)")
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
  options.attention_fp8 = attention_fp8(speed);
  // fp8 attention's requirement (9.0) is the stricter one, so it is named first.
  if (options.attention_fp8 && check_device && !ops::fp8_attention_supported(options.device)) {
    throw InputError("--attention fp8 needs cuDNN's fp8 attention (CUDA compute capability 9.0 or newer: "
                     "Hopper, and a fluxbatch built with cuDNN's frontend); " + options.device.str() +
                     " cannot run it. Use --attention bf16");
  }
  if (options.compute_fp8 && check_device && !ops::fp8_gemm_supported(options.device)) {
    throw InputError("--compute fp8 needs fp8 tensor cores (CUDA compute capability 8.9 or newer: Ada, Hopper); " +
                     options.device.str() + " has none. Use --compute bf16");
  }
  ops::set_kernel_mode(speed.kernels == "fused" ? ops::KernelMode::kFused : ops::KernelMode::kReference);
  options.cuda_graphs = speed.cuda_graphs == "on";
  if (options.device.is_cuda()) {
    log::info(std::string("kernels: ") + speed.kernels + ", CUDA graphs " + speed.cuda_graphs + ", compute " +
              speed.compute + ", attention " + speed.attention);
  }
}

bool attention_fp8(const SpeedOptions& speed) {
  if (speed.attention != "bf16" && speed.attention != "fp8") {
    throw InputError("--attention: expected bf16 or fp8, got '" + speed.attention + "'");
  }
  if (speed.attention == "fp8" && speed.compute != "fp8") {
    throw InputError("--attention fp8 needs --compute fp8");
  }
  return speed.attention == "fp8";
}

std::string calibration_tag(bool quantize_nf4, bool compute_fp8, bool attention_fp8) {
  std::string tag = quantize_nf4 ? "nf4" : "";
  if (compute_fp8) tag += tag.empty() ? "fp8" : "+fp8";
  if (compute_fp8 && attention_fp8) tag += "+fp8attn";
  return tag;
}

std::string compute_mode_identity(const SpeedOptions& speed) {
  return speed.kernels + (speed.compute == "fp8" ? ", fp8 compute" : "") +
         (speed.attention == "fp8" ? ", fp8 attention" : "");
}

}  // namespace fluxbatch::app
