// THE one place where checkpoint key dialects are recognised and renamed. Everything downstream
// sees diffusers names for the FLUX transformer and the VAE, transformers names for CLIP and T5.
//   - prefixes of all-in-one / ComfyUI / Forge files are stripped through known_prefixes();
//   - BFL transformer keys -> diffusers (convert_flux_transformer_checkpoint_to_diffusers);
//   - LDM VAE keys (ae.safetensors) -> diffusers (convert_ldm_vae_checkpoint);
//   - hyper-parameters are detected from tensor shapes (checkpoint_keys.h) for files without config.json.
#pragma once
#include "fluxbatch/models/checkpoint_keys.h"
#include "fluxbatch/nn/weights.h"

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace fluxbatch::models {

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

// The inverse for dense tensors (weight_map_to_bfl.cpp): diffusers FluxTransformer2DModel names -> BFL, as
// ComfyUI and BFL's own files name them: q/k/v (and the single blocks' proj_mlp) rows joined into qkv /
// linear1, norm_out's (scale, shift) halves swapped to (shift, scale). Each BFL tensor goes to `put` as soon
// as it is made, so a caller can convert it (to fp8, say) before the next one exists. ModelError naming
// the key for a missing one or a diffusers key the mapping does not know.
void flux_diffusers_to_bfl(const nn::TensorMap& diffusers, const flux::FluxConfig& config,
                           const std::function<void(const std::string& name, const at::Tensor& tensor)>& put);
nn::TensorMap flux_diffusers_to_bfl(const nn::TensorMap& diffusers, const flux::FluxConfig& config);

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

// The shapes of loaded tensors, for checkpoint_keys.h's detection.
ShapeMap shapes_of(const nn::TensorMap& weights);

// checkpoint_keys.h's detection on loaded tensors (their shapes).
flux::FluxConfig detect_flux_config(const nn::TensorMap& bfl_or_diffusers);
vae::VaeConfig detect_vae_config(const nn::TensorMap& ldm_or_diffusers);
t5::T5Config detect_t5_config(const nn::TensorMap& weights);
clip::ClipTextConfig detect_clip_config(const nn::TensorMap& weights);

}  // namespace fluxbatch::models
