// FluxTransformer2DModel (diffusers transformer_flux.py) for any FluxConfig. Module and parameter names
// equal the diffusers state-dict keys, so nn::load_state fills it straight from
// transformer/diffusion_pytorch_model*.safetensors.
#pragma once
#include "fluxbatch/models/flux/ada_norms.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/double_block.h"
#include "fluxbatch/models/flux/embedders.h"
#include "fluxbatch/models/flux/single_block.h"
#include "fluxbatch/nn/block_hook.h"
#include "fluxbatch/nn/linear.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

namespace fluxbatch::models::flux {

// Debug hook: called with a name and an intermediate activation (e.g. "transformer_blocks.3" with the image
// stream, "transformer_blocks.3.context" with the text stream). Unset costs one branch per block.
using TraceFn = std::function<void(const std::string& name, const at::Tensor& value)>;

// Block streaming (nn::BlockStreamer): i counts the double blocks, then the single blocks
// (0 .. num_layers + num_single_layers - 1).
using BlockHook = nn::BlockHook;

class FluxTransformer2DModelImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); fill them with nn::load_state.
  // For the full model, construct on CPU (untouched pages cost only address space: FLUX.1-dev in bf16 takes
  // ~35 ms and a few MB) and let load_state place each tensor on the GPU, which never holds two copies.
  // Throws ModelError when the config is unusable (e.g. sum(axes_dims_rope) != attention_head_dim).
  explicit FluxTransformer2DModelImpl(const FluxConfig& config, const at::TensorOptions& options = {});

  // hidden_states: [B, S, in_channels] packed latents, encoder_hidden_states: [B, L, joint_attention_dim],
  // pooled_projections: [B, pooled_projection_dim], timestep: [B] (sigma, i.e. t / 1000, as the pipeline
  // passes it), img_ids: [S, 3], txt_ids: [L, 3], guidance: [B] (required iff config.guidance_embeds,
  // else undefined) -> [B, S, patch_size^2 * out_channels], in the parameters' dtype.
  // Inputs must already be on the parameters' device, float ones in the parameters' dtype (as diffusers).
  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                     const at::Tensor& pooled_projections, const at::Tensor& timestep, const at::Tensor& img_ids,
                     const at::Tensor& txt_ids, const at::Tensor& guidance = at::Tensor()) const;

  const FluxConfig& config() const { return config_; }
  void set_trace(TraceFn trace) { trace_ = std::move(trace); }
  void set_block_hook(BlockHook hook) { hook_ = std::move(hook); }
  // The double blocks, then the single blocks: the order forward() runs them and BlockHook counts them.
  std::vector<torch::nn::Module*> blocks();
  // fp8 compute: SingleBlockImpl::join_fp8_projections on every single block; returns how many joined.
  int join_fp8_projections(bool with_mlp = true);
  // --attention fp8: every block's attention through ops::fp8_attention (q, k, v and the output in e4m3 with one
  // scale per image; cuDNN on Hopper). Off (bf16 attention) by default. Callers check
  // ops::fp8_attention_supported first; the CPU runs the op's reference.
  void set_fp8_attention(bool on);
  bool fp8_attention() const { return fp8_attention_; }

  nn::Linear x_embedder{nullptr};        // [inner, in_channels]
  nn::Linear context_embedder{nullptr};  // [inner, joint_attention_dim]
  TimeTextEmbed time_text_embed{nullptr};
  std::vector<DoubleBlock> transformer_blocks;        // registered as ModuleList "transformer_blocks"
  std::vector<SingleBlock> single_transformer_blocks;  // registered as ModuleList "single_transformer_blocks"
  AdaLayerNormContinuous norm_out{nullptr};
  nn::Linear proj_out{nullptr};  // [patch^2 * out_channels, inner]

 private:
  void check_inputs(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                    const at::Tensor& pooled_projections, const at::Tensor& timestep, const at::Tensor& img_ids,
                    const at::Tensor& txt_ids, const at::Tensor& guidance) const;
  void trace(const std::string& name, const at::Tensor& value) const {
    if (trace_) trace_(name, value);
  }

  FluxConfig config_;
  TraceFn trace_;
  BlockHook hook_;
  bool fp8_attention_ = false;
};
TORCH_MODULE(FluxTransformer2DModel);

// The Linears that compute in fp8 under --compute fp8 (by module name): every Linear inside the double and
// single blocks (attention q/k/v/out, feed-forwards, the single blocks' MLP and output, and the modulation
// Linears, a quarter of the weights, whose one-row products read half the bytes in fp8), not the embedders,
// the output norm or the final projection (together about 0.06 B weights).
bool computes_in_fp8(const std::string& linear_name);

}  // namespace fluxbatch::models::flux
