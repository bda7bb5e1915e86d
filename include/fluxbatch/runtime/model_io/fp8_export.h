// `fluxbatch quantize IN OUT.safetensors --to fp8`: a dense diffusers FLUX folder's transformer written as
// one ComfyUI-style "scaled fp8" single file, the layout ComfyUI's flux1-dev-fp8-scaled uses:
//   BFL key names (models::flux_diffusers_to_bfl: q/k/v joined into qkv / linear1);
//   a `scaled_fp8` marker (an empty float8_e4m3fn tensor);
//   every Linear weight of the 57 blocks (the layers --compute fp8 runs in fp8) as float8_e4m3fn with its
//   per-tensor scale in "<p>.scale_weight" (fp32 scalar; quant::quantize_fp8_per_tensor), a fused qkv /
//   linear1 quantized as the one tensor it is;
//   every other tensor (embedders, final layer, biases, norm scales) in bf16.
// fluxbatch loads it from a single-files directory (with ae, clip_l, a T5 file and the tokenizers):
// natively in fp8 under --compute fp8, dequantized (w8 * scale in fp32, rounded once) otherwise.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace fluxbatch::runtime {

struct Fp8ExportReport {
  int64_t fp8_linears = 0;        // Linear weights stored in fp8
  uint64_t transformer_bytes_in = 0;
  uint64_t bytes_out = 0;
};

// Writes OUT (a .safetensors path; through a temporary file renamed into place) from IN's transformer,
// quantizing on `device` one tensor at a time. ModelError when IN is not a dense diffusers FLUX folder
// (as quantize_model); OutputError when OUT exists without `overwrite`, does not end in .safetensors,
// lies inside IN or cannot be written.
Fp8ExportReport export_fp8_transformer(const std::string& in, const std::string& out, bool overwrite,
                                       c10::Device device = c10::Device(c10::kCPU));

}  // namespace fluxbatch::runtime
