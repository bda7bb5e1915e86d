// FLUX conditioning embedders (diffusers embeddings.py): the sinusoidal timestep projection, the
// Linear-SiLU-Linear MLPs, and time_text_embed that sums timestep, guidance and pooled-text embeddings.
#pragma once
#include "fluxbatch/nn/linear.h"

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>

namespace fluxbatch::models::flux {

// Channels of the sinusoidal timestep/guidance projection (diffusers hard-codes 256 for FLUX).
constexpr int64_t kTimestepChannels = 256;

// diffusers get_timestep_embedding, always in fp32: t: [B] -> [B, dim]. With flip_sin_to_cos the
// layout is [cos(t*f_k), sin(t*f_k)], f_k = exp(-ln(max_period) * k / (dim/2 - downscale_freq_shift)).
at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, bool flip_sin_to_cos = true,
                              double downscale_freq_shift = 0.0, double scale = 1.0, double max_period = 10000.0);

// linear_1 -> SiLU -> linear_2. Serves as both diffusers TimestepEmbedding(act "silu") and
// PixArtAlphaTextProjection(act_fn "silu"): same math, same parameter names.
class MlpEmbedderImpl : public torch::nn::Module {
 public:
  MlpEmbedderImpl(int64_t in_features, int64_t hidden, const at::TensorOptions& options);
  // x: [B, in] -> [B, hidden]
  at::Tensor forward(const at::Tensor& x) const;

  nn::Linear linear_1{nullptr};  // [hidden, in]
  nn::Linear linear_2{nullptr};  // [hidden, hidden]
};
TORCH_MODULE(MlpEmbedder);

// CombinedTimestepTextProjEmbeddings / CombinedTimestepGuidanceTextProjEmbeddings ("time_text_embed").
class TimeTextEmbedImpl : public torch::nn::Module {
 public:
  TimeTextEmbedImpl(int64_t embedding_dim, int64_t pooled_projection_dim, bool guidance_embeds,
                    const at::TensorOptions& options);
  // timestep, guidance: [B], already scaled by 1000 (guidance undefined without a guidance embedder);
  // pooled: [B, pooled_projection_dim] -> temb [B, embedding_dim] in pooled's dtype.
  at::Tensor forward(const at::Tensor& timestep, const at::Tensor& guidance, const at::Tensor& pooled) const;

  bool has_guidance() const { return !guidance_embedder.is_empty(); }

  MlpEmbedder timestep_embedder{nullptr};
  MlpEmbedder guidance_embedder{nullptr};  // empty for schnell
  MlpEmbedder text_embedder{nullptr};
};
TORCH_MODULE(TimeTextEmbed);

}  // namespace fluxbatch::models::flux
