// LoRA files for FLUX.1, read into one form: per Linear of ours (module names as in our models, which
// are the diffusers names), a low-rank update W + alpha_scale * up @ down. Four dialects are read:
//   diffusers / PEFT: "transformer.<module>.lora_A.weight" / "lora_B.weight" (+ "<module>.alpha" or the
//                     "lora_adapter_metadata" of diffusers' save_lora_weights), "text_encoder.<module>..."
//   Kohya / ComfyUI:  "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" / "lora_up" + ".alpha"
//                     (ComfyUI's "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight" too), with
//                     the CLIP encoder as "lora_te1_..." / "lora_te_..."
//   XLabs:            "double_blocks.0.processor.qkv_lora1.down.weight" / "up" (no alpha)
// BFL's fused layers (qkv, the single blocks' linear1 = q | k | v | MLP, the final adaLN's shift | scale)
// are split by rows of `up` exactly as diffusers' converters split them: `down` is shared, each part
// takes its rows of `up`; the part sizes follow from the LoRA's own shapes (hidden = down's columns).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace fluxbatch::models::lora {

enum class LoraFormat { kPeft, kKohya, kXLabs };
const char* format_name(LoraFormat format);  // "diffusers/PEFT", "Kohya/ComfyUI", "XLabs"

enum class LoraComponent { kTransformer, kTextEncoder };
const char* component_name(LoraComponent component);  // "transformer", "text_encoder"

// One Linear's update.
struct LoraTarget {
  LoraComponent component = LoraComponent::kTransformer;
  std::string module;         // e.g. "transformer_blocks.0.attn.to_q", "text_model.encoder.layers.0.mlp.fc1"
  at::Tensor down;            // A: [rank, in], float32 on the CPU
  at::Tensor up;              // B: [out, rank], float32 on the CPU
  double alpha_scale = 1.0;   // alpha / rank where the format does not fold it into the weights
  std::string source;         // the file's key stem it came from (messages)
  int64_t rank() const { return down.size(0); }
};

struct LoraFile {
  std::string path;
  LoraFormat format = LoraFormat::kPeft;
  std::vector<LoraTarget> targets;  // in the file's key order
  // Keys that name nothing this reader maps (another model's layers, DoRA magnitudes, ...): an error
  // unless the LoRA is used with "strict": false.
  std::vector<std::string> unknown_keys;
  uint64_t file_bytes = 0;
  int64_t parameters = 0;  // of the file's LoRA tensors (before fused layers are split)

  // The ranks present (most LoRAs have one).
  std::vector<int64_t> ranks() const;
  bool has(LoraComponent component) const;
};

// Reads and maps a LoRA file; ModelError (naming the file) when it is no safetensors file, holds no
// LoRA tensors, or a pair is malformed (down without up, ranks that differ, not 2-D).
LoraFile read_lora_file(const std::string& path);

// (in_features, out_features) of every Linear of a model, by module name.
using LinearShapes = std::map<std::string, std::pair<int64_t, int64_t>>;

// What does not fit the model: targets naming no Linear of `shapes` (per component), and shape
// mismatches ("transformer_blocks.0.attn.to_q: LoRA is [64 -> 32] (rank 4), the layer [32 -> 32]").
// Empty when everything fits. A component absent from `shapes` counts as absent from the model.
struct LoraFit {
  std::vector<std::string> missing_modules;  // "transformer: transformer_blocks.25.attn.to_q (from <key>)"
  std::vector<std::string> shape_errors;
};
LoraFit check_fit(const LoraFile& file, const std::map<LoraComponent, const LinearShapes*>& shapes);

// Drops the targets that name no Linear (strict: false).
void drop_missing(LoraFile& file, const std::map<LoraComponent, const LinearShapes*>& shapes);

}  // namespace fluxbatch::models::lora
