// THE one place where checkpoint key dialects are recognised and renamed. Everything downstream
// sees diffusers names for the FLUX transformer and the VAE, transformers names for CLIP and T5.
//   - prefixes of all-in-one / ComfyUI / Forge files are stripped through known_prefixes();
//   - BFL transformer keys -> diffusers (convert_flux_transformer_checkpoint_to_diffusers);
//   - LDM VAE keys (ae.safetensors) -> diffusers (convert_ldm_vae_checkpoint);
//   - hyper-parameters are detected from tensor shapes for files that carry no config.json.
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/models/vae/config.h"
#include "fluxbatch/nn/weights.h"

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

// Keys starting with `prefix`, with it removed (zero-copy).
nn::TensorMap strip_prefix(const nn::TensorMap& weights, const std::string& prefix);

// BFL FLUX transformer -> diffusers FluxTransformer2DModel names; splits the fused img/txt qkv and
// single-block linear1, swaps final_layer.adaLN_modulation's (shift, scale) halves to (scale,
// shift). Mirrors diffusers' convert_flux_transformer_checkpoint_to_diffusers, including its
// tolerance of a leading "model.diffusion_model.". ModelError naming the key when one is missing.
// bnb-NF4 Linears (Forge's flux1-dev-bnb-nf4 v1 / v2: "<p>.weight" packed + "<p>.weight.absmax",
// ".quant_map", [".nested_absmax", ".nested_quant_map"], ".quant_state.bitsandbytes__nf4") come out
// NF4 too, serialized the same way under the diffusers names (nn::load_nf4_state reads them); fused
// ones are split by rows as weight_map_nf4.h describes, exactly. ModelError naming the key for a
// malformed NF4 weight (nn::read_bnb_nf4's checks), statistics without a quant state, fp4.
nn::TensorMap flux_bfl_to_diffusers(const nn::TensorMap& bfl, const flux::FluxConfig& config);

// LDM VAE (ae.safetensors) -> diffusers AutoencoderKL names, encoder and decoder; the mid-block
// attention's 1x1 conv weights become Linear weights. Mirrors diffusers' convert_ldm_vae_checkpoint.
nn::TensorMap vae_ldm_to_diffusers(const nn::TensorMap& ldm);

// transformers naming for the text encoders: T5 "encoder.embed_tokens.weight" (a tied copy) becomes
// "shared.weight" when that is absent, decoder.* / lm_head.* of full T5 checkpoints are dropped; CLIP checkpoints' text_projection / logit_scale /
// position_ids extras are dropped.
// Both accept ComfyUI "scaled fp8" files: scale_weight stays beside its weight (nn::load_state applies it).
nn::TensorMap t5_to_transformers(const nn::TensorMap& weights);
nn::TensorMap clip_to_transformers(const nn::TensorMap& weights);

// ComfyUI "scaled fp8": drops the `scaled_fp8` marker and every "<p>.scale_input" (static activation scales
// for fp8 matmuls; fluxbatch scales activations per token), keeping "<p>.scale_weight" beside its weight.
void drop_scaled_fp8_extras(nn::TensorMap& weights);

// Shapes only, for detection without tensors (e.g. from safetensors headers).
using ShapeMap = std::map<std::string, std::vector<int64_t>>;
ShapeMap shapes_of(const nn::TensorMap& weights);

// Hyper-parameters from tensor names and shapes (prefix already stripped). Fields that shapes cannot
// tell use the FLUX.1 values or a documented guess: FLUX axes_dims_rope (split of head dim:
// [d/8 rounded up to 4, rest halved] -> [16,56,56] for 128), VAE norm_num_groups
// (min(32, block_out_channels[0] / 4)) and scaling/shift factors, CLIP head count (head dim 64 when
// hidden_size allows, else the largest of 32/16/8 giving >= 2 heads), eps values, T5
// relative_attention_max_distance. Accept either dialect; bnb-NF4 packed Linear weights are
// understood ([(N*K+1)/2, 1] uint8). Result is validate()d; ModelError naming the missing key.
flux::FluxConfig detect_flux_config(const nn::TensorMap& bfl_or_diffusers);
flux::FluxConfig detect_flux_config(const ShapeMap& bfl_or_diffusers);
vae::VaeConfig detect_vae_config(const nn::TensorMap& ldm_or_diffusers);
vae::VaeConfig detect_vae_config(const ShapeMap& ldm_or_diffusers);
t5::T5Config detect_t5_config(const nn::TensorMap& weights);
t5::T5Config detect_t5_config(const ShapeMap& weights);
clip::ClipTextConfig detect_clip_config(const nn::TensorMap& weights);
clip::ClipTextConfig detect_clip_config(const ShapeMap& weights);

// True when the FLUX transformer keys (either dialect) include the guidance embedder (FLUX.1-dev).
bool has_guidance_embedder(const std::vector<std::string>& transformer_keys);

}  // namespace fluxbatch::models
