#include "cli_quantize.h"

#include <cstdio>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/model_io/fp8_export.h"
#include "fluxbatch/runtime/model_io/quantize_model.h"

namespace fluxbatch::app {

CLI::App* add_quantize_command(CLI::App& app, QuantizeCommand& command) {
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Write a copy of a diffusers FLUX folder with its transformer in bitsandbytes NF4, or (--to fp8) the transformer "
      "as a scaled-fp8 single file");
  cmd->add_option("IN", command.in, "Dense diffusers folder (bf16, fp16 or fp32 transformer)")->required();
  cmd->add_option("OUT", command.out,
                  "nf4: the folder to create; fp8: the .safetensors file to create (either written beside it, then "
                  "renamed into place)")
      ->required();
  cmd->add_option("--to", command.to,
                  "nf4: a diffusers folder diffusers + bitsandbytes also load (default); fp8: the transformer alone as "
                  "a ComfyUI-style scaled-fp8 file (BFL names, float8_e4m3fn blocks with per-tensor scale_weight)")
      ->check(CLI::IsMember({"nf4", "fp8"}))
      ->type_name("nf4|fp8");
  cmd->add_flag("--double-quant", command.double_quant,
                "nf4: double-quantize the absmax statistics (bnb_4bit_use_double_quant=True): ~0.4 bits/weight less");
  cmd->add_option("--device", command.device,
                  "nf4: reproduce bitsandbytes' rounding on cuda (what diffusers does on a GPU and what render "
                  "--quantize nf4 does; default) or on cpu (its CPU backend); the GPU is used when present. fp8: "
                  "where to quantize (the same bytes either way)")
      ->check(CLI::IsMember({"cuda", "cpu"}))
      ->type_name("cuda|cpu");
  cmd->add_flag("--overwrite", command.overwrite, "Replace OUT if it exists (only once the new folder or file is complete)");
  cmd->footer(
      "--to nf4: the transformer's Linear weights become NF4 (blocksize 64, from bf16), everything else of the\n"
      "transformer bf16; config.json gains diffusers' \"quantization_config\" (BitsAndBytesConfig\n"
      "load_in_4bit, nf4, compute dtype bfloat16). Text encoders, VAE, tokenizers and scheduler are\n"
      "hard-linked from IN. The result loads in fluxbatch and in diffusers + bitsandbytes\n"
      "(FluxPipeline.from_pretrained(OUT)). Weights are processed one tensor at a time.\n"
      "--to fp8 writes the transformer alone, as ComfyUI's flux1-dev-fp8-scaled is laid out (half the bf16\n"
      "size): the 57 blocks' Linear weights in float8_e4m3fn, each with one scale (max|w| / 448), everything\n"
      "else bf16. Put it in a single-files folder with ae.safetensors, clip_l.safetensors, a T5 file and\n"
      "tokenizer/ + tokenizer_2/, and render with --compute fp8 (used as stored) or bf16 (dequantized on load).\n"
      "Examples:\n"
      "  fluxbatch quantize /models/FLUX.1-dev /models/FLUX.1-dev-nf4\n"
      "  fluxbatch quantize /models/FLUX.1-dev /models/FLUX.1-dev-nf4-dq --double-quant\n"
      "  fluxbatch quantize /models/FLUX.1-dev /models/flux-single/flux1-dev-fp8-scaled.safetensors --to fp8\n");
  return cmd;
}

void run_quantize(const QuantizeCommand& command) {
  if (command.to == "fp8") {
    if (command.double_quant) throw InputError("--double-quant applies to --to nf4 only");
    const c10::Device device = command.device == "cuda" && runtime::cuda_available() ? runtime::parse_device("cuda")
                                                                                      : c10::Device(c10::kCPU);
    log::info("writing " + command.in + "'s transformer as scaled fp8 -> " + command.out + " (on " + device.str() + ")");
    const runtime::Fp8ExportReport r = runtime::export_fp8_transformer(command.in, command.out, command.overwrite, device);
    std::printf("%s: %lld Linear weights in scaled fp8 (float8_e4m3fn), the rest bf16; transformer %.1f MiB -> %.1f MiB\n",
                command.out.c_str(), static_cast<long long>(r.fp8_linears), r.transformer_bytes_in / 1048576.0,
                r.bytes_out / 1048576.0);
    return;
  }
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
