// `fluxbatch inspect MODEL`: what a model folder or file holds, from safetensors headers only
// (no weights read): layout, variant, and per component its parameter count, dtypes, bytes, key
// dialect, quantization and files.
#pragma once
#include "fluxbatch/runtime/model_files.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fluxbatch::runtime {

struct ComponentSummary {
  std::string name;  // "transformer", "text_encoder", "text_encoder_2", "vae"
  int64_t parameters = 0;  // logical weights: a bnb-NF4 packed byte counts as two; quantization state not counted
  uint64_t bytes = 0;      // every tensor of the component as stored
  int64_t tensors = 0;
  std::map<std::string, int64_t> dtypes;  // "BF16" -> number of tensors
  std::string quantization;               // "none", "bnb-nf4", "bnb-fp4"
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

// The summary as aligned text (json = false) or as a JSON document (json = true).
std::string inspect_model(const std::string& path, bool json);

}  // namespace fluxbatch::runtime
