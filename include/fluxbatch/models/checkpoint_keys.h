// Recognising checkpoint layouts from tensor names and shapes alone (safetensors headers), without
// libtorch: which component a key belongs to, under which all-in-one prefix and in which naming
// dialect, and each component's hyper-parameters detected from its shapes. weight_map.h builds the
// renaming on top of this; the fuzz target tests/fuzz/fuzz_single_file.cpp runs it on hostile headers.
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/models/vae/config.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fluxbatch::models {

enum class Component { kTransformer, kTextEncoder, kTextEncoder2, kVae };
// "transformer", "text_encoder" (CLIP-L), "text_encoder_2" (T5-XXL), "vae": the diffusers folder names.
const char* component_name(Component component);

// Naming scheme of one component's keys once its prefix is stripped.
enum class KeyDialect {
  kDiffusers,     // transformer / vae as in a diffusers folder
  kBfl,           // transformer as in flux1-dev.safetensors (double_blocks.N.img_attn.qkv ...)
  kLdm,           // vae as in ae.safetensors (decoder.up.N.block.K ...)
  kTransformers,  // CLIP / T5 (text_model.*, encoder.block.*, shared.weight)
};
const char* dialect_name(KeyDialect dialect);  // "diffusers", "bfl", "ldm", "transformers"

struct PrefixRule {
  std::string prefix;
  Component component;
};
// Prefixes of all-in-one checkpoints (ComfyUI, Forge, LDM), longest first.
const std::vector<PrefixRule>& known_prefixes();

// One component found among a file's tensor names.
struct ComponentKeys {
  Component component;
  std::string prefix;  // stripped from every key of this component ("" for a bare file)
  KeyDialect dialect;
  size_t count = 0;    // tensors of this component
};
// Which components the names of one file hold, under which prefix and in which dialect (ordered by
// Component). Names belonging to no known component are ignored.
std::vector<ComponentKeys> classify_keys(const std::vector<std::string>& names);

// True when the FLUX transformer keys (either dialect) include the guidance embedder (FLUX.1-dev).
bool has_guidance_embedder(const std::vector<std::string>& transformer_keys);

// Tensor name -> shape, e.g. from safetensors headers.
using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// "[3072, 64]": a shape as error messages print it.
std::string shape_text(const std::vector<int64_t>& shape);

// Hyper-parameters from tensor names and shapes (prefix already stripped). Fields that shapes cannot
// tell use the FLUX.1 values or a documented guess: FLUX axes_dims_rope (split of head dim:
// [d/8 rounded up to 4, rest halved] -> [16,56,56] for 128), VAE norm_num_groups
// (min(32, block_out_channels[0] / 4)) and scaling/shift factors, CLIP head count (head dim 64 when
// hidden_size allows, else the largest of 32/16/8 giving >= 2 heads), eps values, T5
// relative_attention_max_distance. Accept either dialect; bnb-NF4 packed Linear weights are
// understood ([(N*K+1)/2, 1] uint8). Result is validate()d; ModelError naming the missing key, or the
// tensor whose shape or block count is out of any plausible range.
flux::FluxConfig detect_flux_config(const ShapeMap& bfl_or_diffusers);
vae::VaeConfig detect_vae_config(const ShapeMap& ldm_or_diffusers);
t5::T5Config detect_t5_config(const ShapeMap& weights);
clip::ClipTextConfig detect_clip_config(const ShapeMap& weights);

}  // namespace fluxbatch::models
