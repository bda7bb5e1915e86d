// `fluxbatch inspect MODEL`: what a model folder or file holds, from safetensors headers only
// (no weights read): layout, variant, and per component its parameter count, dtypes, bytes, key
// dialect, quantization and files.
#pragma once
#include "fluxbatch/runtime/model_io/model_files.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fluxbatch::runtime {

struct ComponentSummary {
  std::string name;  // "transformer", "text_encoder", "text_encoder_2", "vae"
  int64_t parameters = 0;  // logical weights: a bnb-NF4 packed byte counts as two; quantization state not counted
  // The float weights the loader keeps: not the VAE's encoder, CLIP's vision tower and position ids,
  // T5's decoder, nor the second copy of T5's tied embedding.
  int64_t loaded_parameters = 0;
  uint64_t bytes = 0;      // every tensor of the component as stored
  int64_t tensors = 0;
  std::map<std::string, int64_t> dtypes;  // "BF16" -> number of tensors
  std::string quantization;               // "none", "bnb-nf4", "bnb-fp4"
  // How the weights are stored: "dense", "nf4", "nf4-dq" (bnb NF4 with double-quantized absmax),
  // "fp4", "fp8-e4m3" / "fp8-e5m2" (some weights in a float8 dtype).
  std::string format;
  std::string dense_dtype;     // float dtypes of the unquantized tensors, e.g. "bf16" or "bf16+fp32"
  uint64_t quantized_bytes = 0;  // packed / fp8 weights and their quantization state
  // Weights `--quantize nf4` would turn into NF4 while loading (transformer and T5 Linear weights but
  // T5's `wo`); 0 for the other components and for components already quantized.
  int64_t nf4_candidate_parameters = 0;
  std::string dialect;                    // "diffusers", "bfl", "ldm", "transformers"
  std::string prefix;
  std::vector<std::string> files;
};

struct ModelSummary {
  std::string path;
  std::string layout;
  std::string variant;
  std::vector<ComponentSummary> components;  // transformer, text_encoder, text_encoder_2, vae
};

ModelSummary summarize_model(const std::string& path);

// Bytes `parameters` weights take as bnb NF4 without double quantization: 4 bits each plus one
// float32 absmax per block of 64 (per-tensor rounding ignored).
int64_t nf4_bytes(int64_t parameters);

// Bytes the component would hold on the device when loaded in a dtype of `dtype_size` bytes:
// bnb-quantized components as stored (what the loader skips excluded), others' loaded_parameters
// converted (fp8 widened too), and with `quantize_nf4` their nf4_candidate_parameters as NF4.
// (fp8: the transformer computes in fp8 with fp8 weights resident, whatever they are stored as.)
int64_t loaded_bytes(const ComponentSummary& component, int dtype_size, bool quantize_nf4, bool fp8 = false);

// The summary as aligned text (json = false) or as a JSON document (json = true).
std::string inspect_model(const std::string& path, bool json);

}  // namespace fluxbatch::runtime
