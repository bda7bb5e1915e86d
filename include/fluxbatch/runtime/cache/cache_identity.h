// What a cache entry is keyed by, besides the prompt and the image's own parameters: which weights,
// tokenizers and code computed it, and how (device, dtype, quantization). Read from the files
// without loading them: each file's size, its first MiB (the safetensors header and then some) and
// 16 blocks of 64 KiB spread over it, so a different checkpoint with the same layout (a fine-tune)
// is told apart for the price of about 2 MiB read per file.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::runtime {

// SHA-256 (hex) of a file's size and sampled contents; ModelError when it cannot be read.
std::string file_fingerprint(const std::string& path);

// "cuda (NVIDIA H100 80GB HBM3), bf16, quantize nf4, fused": what else decides the numbers (`mode`: the
// kernels and the compute mode, app::compute_mode_identity). The GPU's name comes from its properties
// (no CUDA context is created).
std::string compute_identity(c10::Device device, c10::ScalarType dtype, bool quantize_nf4, const std::string& mode = "");

// The text encoders (CLIP + T5 weights, configs and both tokenizers), plus fluxbatch's version: the
// prompt-embedding cache's key prefix (with compute_identity).
std::string text_encoders_identity(const ModelFiles& model);
// Every component, the tokenizers and the scheduler config, plus fluxbatch's version: the image
// cache's key prefix (with compute_identity).
std::string model_files_identity(const ModelFiles& model);

}  // namespace fluxbatch::runtime
