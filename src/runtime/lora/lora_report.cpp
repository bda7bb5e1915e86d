#include "fluxbatch/runtime/lora/lora_report.h"

#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/lora/lora_file.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

namespace fluxbatch::runtime {
namespace {

using models::lora::LoraComponent;

// "transformer_blocks.12.attn.to_q" -> "transformer_blocks.*.attn.to_q": one line per kind of layer.
std::string pattern(const std::string& module) {
  std::string out;
  for (size_t i = 0; i < module.size();) {
    if (std::isdigit(static_cast<unsigned char>(module[i])) && (i == 0 || module[i - 1] == '.')) {
      size_t j = i;
      while (j < module.size() && std::isdigit(static_cast<unsigned char>(module[j]))) ++j;
      if (j == module.size() || module[j] == '.') {
        // Only a block's index is starred; a layer's own ("to_out.0", "net.2") stays.
        out += module.compare(0, i, "transformer_blocks.") == 0 || module.compare(0, i, "single_transformer_blocks.") == 0 ||
                       module.compare(0, i, "text_model.encoder.layers.") == 0
                   ? "*"
                   : module.substr(i, j - i);
        i = j;
        continue;
      }
    }
    out += module[i++];
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  char buffer[32];
  if (bytes >= (uint64_t{1} << 30)) {
    std::snprintf(buffer, sizeof buffer, "%.2f GiB", static_cast<double>(bytes) / (1 << 30));
  } else {
    std::snprintf(buffer, sizeof buffer, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  }
  return buffer;
}

}  // namespace

bool looks_like_lora(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  io::SafetensorsHeader header;
  try {
    header = io::read_safetensors_header(path);
  } catch (const std::exception&) {
    return false;
  }
  for (const io::TensorEntry& t : header.tensors) {
    const std::string& k = t.name;
    if (k.find(".lora_A.") != std::string::npos || k.find(".lora_down.") != std::string::npos ||
        (k.find(".processor.") != std::string::npos && k.find("_lora") != std::string::npos)) {
      return true;
    }
  }
  return false;
}

std::string inspect_lora(const std::string& path, bool json) {
  const models::lora::LoraFile file = models::lora::read_lora_file(path);
  const LoraHashes hashes = lora_hashes(path);
  std::map<std::string, std::map<std::string, int>> kinds;  // component -> pattern -> layers
  std::set<double> scales;
  for (const models::lora::LoraTarget& t : file.targets) {
    ++kinds[models::lora::component_name(t.component)][pattern(t.module)];
    scales.insert(t.alpha_scale);
  }
  const std::vector<int64_t> ranks = file.ranks();
  if (json) {
    nlohmann::ordered_json out;
    out["path"] = path;
    out["kind"] = "lora";
    out["format"] = models::lora::format_name(file.format);
    out["ranks"] = ranks;
    out["alpha_scales"] = std::vector<double>(scales.begin(), scales.end());
    out["layers"] = file.targets.size();
    nlohmann::ordered_json targets;
    for (const auto& [component, patterns] : kinds) targets[component] = patterns;
    out["targets"] = targets;
    out["parameters"] = file.parameters;
    out["bytes"] = file.file_bytes;
    out["sha256"] = hashes.sha256;
    out["short_hash"] = hashes.short_hash;
    out["unknown_keys"] = file.unknown_keys;
    return out.dump(2) + "\n";
  }
  std::string rank_text, scale_text;
  for (int64_t r : ranks) rank_text += (rank_text.empty() ? "" : ", ") + std::to_string(r);
  for (double s : scales) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", s);
    scale_text += (scale_text.empty() ? "" : ", ") + std::string(b);
  }
  std::string out = path + "\n  kind: LoRA (" + models::lora::format_name(file.format) + ")\n  rank: " + rank_text +
                    "\n  alpha scaling: " + scale_text + (file.format == models::lora::LoraFormat::kKohya
                                                              ? " (Kohya's alpha / rank is folded into the weights)"
                                                              : "") +
                    "\n  layers: " + std::to_string(file.targets.size()) + " Linear(s)\n";
  for (const auto& [component, patterns] : kinds) {
    out += "  " + component + ":\n";
    for (const auto& [p, n] : patterns) out += "    " + p + (n > 1 ? "  (x" + std::to_string(n) + ")" : "") + "\n";
  }
  out += "  size: " + std::to_string(file.parameters) + " parameters, " + human_bytes(file.file_bytes) + "\n";
  out += "  sha256: " + hashes.sha256 + " (A1111 short hash " + hashes.short_hash + ")\n";
  if (!file.unknown_keys.empty()) {
    out += "  unknown keys (an error unless used with \"strict\": false): " + std::to_string(file.unknown_keys.size());
    for (size_t i = 0; i < file.unknown_keys.size() && i < 8; ++i) out += (i ? ", " : ": ") + file.unknown_keys[i];
    out += "\n";
  }
  return out;
}

}  // namespace fluxbatch::runtime
