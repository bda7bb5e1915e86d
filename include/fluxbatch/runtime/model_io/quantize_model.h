// `fluxbatch quantize IN OUT`: a dense diffusers FLUX folder -> the same folder with its transformer in
// the bitsandbytes NF4 serialization that diffusers' save_pretrained writes for
// FluxTransformer2DModel.from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16[, bnb_4bit_use_double_quant=True]),
// torch_dtype=torch.bfloat16), which diffusers + bitsandbytes load back:
//   transformer/config.json                     IN's config + "_name_or_path" + "quantization_config"
//   transformer/diffusion_pytorch_model.safetensors
//     every Linear weight <p>.weight -> <p>.weight (uint8 [(n+1)/2, 1]), .absmax, .quant_map,
//     [.nested_absmax, .nested_quant_map,] .quant_state.bitsandbytes__nf4 (UTF-8 JSON as uint8);
//     every other tensor in bf16; tensors ordered and the header laid out as the Python safetensors
//     package writes them, so the file is byte-identical to save_pretrained's when the codes are.
// Everything else of IN is hard-linked (copied across file systems).
#pragma once
#include "fluxbatch/quant/nf4_format.h"
#include "fluxbatch/runtime/model_io/model_files.h"

#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <string>

namespace fluxbatch::runtime {

struct QuantizeOptions {
  bool double_quant = false;  // bnb_4bit_use_double_quant
  // Whose rounding to reproduce: kCuda (diffusers quantizing on a GPU, what `render --quantize nf4`
  // does) or kCpu (bitsandbytes' CPU backend). See quant::BnbBackend.
  quant::BnbBackend like = quant::BnbBackend::kCuda;
  // Where weights are quantized. Only the double-quant offset (a mean) is computed there; the codes
  // are the same anywhere.
  c10::Device device = c10::Device(c10::kCPU);
  bool overwrite = false;  // replace an existing OUT (only once the new one is complete)
};

struct QuantizeReport {
  int64_t linears = 0;           // Linear weights quantized
  uint64_t transformer_bytes_in = 0;
  uint64_t transformer_bytes_out = 0;
  int64_t files_linked = 0;      // other files hard-linked from IN
  int64_t files_copied = 0;      // other files copied (hard links impossible)
};

// Writes OUT from IN through a temporary folder beside OUT, renamed into place at the end (nothing is
// left behind on failure), one tensor at a time (double quantization reads each weight twice: its
// offset enters the header, which precedes the data). ModelError when IN is not a dense diffusers
// folder (BFL / ComfyUI single files and all-in-one files are refused: convert them to a diffusers
// folder first) or its transformer is already quantized; OutputError when OUT exists without
// `overwrite`, is IN, or cannot be written.
// IN located as a dense diffusers folder (what quantize reads); ModelError otherwise, as quantize_model.
ModelFiles dense_diffusers_model(const std::string& in);

// OUT for IN: outside IN and not containing it, in an existing directory, and new unless `overwrite`;
// OutputError otherwise.
void check_quantize_output(const std::string& in, const std::filesystem::path& out, bool overwrite);

QuantizeReport quantize_model(const std::string& in, const std::string& out, const QuantizeOptions& options);

// The bytes of bnb's "<p>.weight.quant_state.bitsandbytes__nf4" tensor for `w`: json.dumps of
// QuantState.as_dict's non-tensor items, e.g.
// {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [32, 64]}.
std::string bnb_quant_state_json(const quant::Nf4Tensor& w);

// Python's repr() of a float (shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16).
std::string python_float_repr(double value);

// `config_json` (a diffusers config.json) as save_pretrained writes it for a bnb-NF4 model: with
// "_name_or_path" and "quantization_config" (BitsAndBytesConfig.to_dict()), sorted keys, indent 2.
// ModelError when it is not a JSON object.
std::string bnb_nf4_config_json(const std::string& config_json, const std::string& name_or_path, bool double_quant);

}  // namespace fluxbatch::runtime
