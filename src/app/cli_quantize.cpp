#include "cli_quantize.h"

#include <cstdio>

#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/quantize_model.h"

namespace fluxbatch::app {

CLI::App* add_quantize_command(CLI::App& app, QuantizeCommand& command) {
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Write a copy of a diffusers FLUX folder with its transformer in bitsandbytes NF4");
  cmd->add_option("IN", command.in, "Dense diffusers folder (bf16, fp16 or fp32 transformer)")->required();
  cmd->add_option("OUT", command.out, "Folder to create (written beside it, then renamed into place)")->required();
  cmd->add_flag("--double-quant", command.double_quant,
                "Double-quantize the absmax statistics (bnb_4bit_use_double_quant=True): ~0.4 bits/weight less");
  cmd->add_option("--device", command.device,
                  "Reproduce bitsandbytes' rounding on cuda (what diffusers does on a GPU and what render "
                  "--quantize nf4 does; default) or on cpu (its CPU backend); the GPU is used when present")
      ->check(CLI::IsMember({"cuda", "cpu"}))
      ->type_name("cuda|cpu");
  cmd->add_flag("--overwrite", command.overwrite, "Replace OUT if it exists (only once the new folder is complete)");
  cmd->footer(
      "The transformer's Linear weights become NF4 (blocksize 64, from bf16), everything else of the\n"
      "transformer bf16; config.json gains diffusers' \"quantization_config\" (BitsAndBytesConfig\n"
      "load_in_4bit, nf4, compute dtype bfloat16). Text encoders, VAE, tokenizers and scheduler are\n"
      "hard-linked from IN. The result loads in fluxbatch and in diffusers + bitsandbytes\n"
      "(FluxPipeline.from_pretrained(OUT)). Weights are processed one tensor at a time.\n"
      "Examples:\n"
      "  fluxbatch quantize /models/FLUX.1-dev /models/FLUX.1-dev-nf4\n"
      "  fluxbatch quantize /models/FLUX.1-dev /models/FLUX.1-dev-nf4-dq --double-quant\n");
  return cmd;
}

void run_quantize(const QuantizeCommand& command) {
  runtime::QuantizeOptions options;
  options.double_quant = command.double_quant;
  options.like = command.device == "cpu" ? quant::BnbBackend::kCpu : quant::BnbBackend::kCuda;
  if (command.device == "cuda" && runtime::cuda_available()) options.device = runtime::parse_device("cuda");
  options.overwrite = command.overwrite;
  log::info("quantizing " + command.in + " -> " + command.out + " (nf4" +
            (command.double_quant ? ", double quant" : "") + ", bitsandbytes " + command.device + " rounding)");
  const runtime::QuantizeReport r = runtime::quantize_model(command.in, command.out, options);
  std::printf("%s: %lld Linear weights in NF4%s; transformer %.1f MiB -> %.1f MiB; %lld files linked, %lld copied\n",
              command.out.c_str(), static_cast<long long>(r.linears), command.double_quant ? " (double quant)" : "",
              r.transformer_bytes_in / 1048576.0, r.transformer_bytes_out / 1048576.0,
              static_cast<long long>(r.files_linked), static_cast<long long>(r.files_copied));
}

}  // namespace fluxbatch::app
