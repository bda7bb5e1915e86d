// `fluxbatch inspect` on a LoRA file: its format, ranks, the layers it changes and its size.
#pragma once
#include <string>

namespace fluxbatch::runtime {

// True when `path` is a safetensors file whose keys look like a LoRA of a format this version reads
// (header only).
bool looks_like_lora(const std::string& path);

// The report (text, or JSON with `json`): format, ranks, alpha scaling, targets grouped by layer kind
// per component, parameters, bytes, SHA-256 and A1111's short hash, unknown keys. ModelError when the
// file is no readable LoRA.
std::string inspect_lora(const std::string& path, bool json);

}  // namespace fluxbatch::runtime
