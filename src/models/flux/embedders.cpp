#include "fluxbatch/models/flux/embedders.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/activations.h"

#include <ATen/ATen.h>

#include <cmath>

namespace fluxbatch::models::flux {

at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, bool flip_sin_to_cos, double downscale_freq_shift,
                              double scale, double max_period) {
  FLUXBATCH_CHECK(t.dim() == 1, InputError, "timestep_embedding: timesteps must be 1-D");
  const int64_t half = dim / 2;
  // Op for op as get_timestep_embedding: fp32 exponent, divided (not multiplied by a reciprocal).
  const at::Tensor exponent =
      at::arange(0, half, t.options().dtype(at::kFloat)) * (-std::log(max_period)) / (half - downscale_freq_shift);
  at::Tensor args = t.unsqueeze(1).to(at::kFloat) * at::exp(exponent).unsqueeze(0);  // [B, half]
  if (scale != 1.0) args = args * scale;  // multiplying by 1 is exact, so skipping it changes nothing
  at::Tensor emb = flip_sin_to_cos ? at::cat({args.cos(), args.sin()}, -1) : at::cat({args.sin(), args.cos()}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

MlpEmbedderImpl::MlpEmbedderImpl(int64_t in_features, int64_t hidden, const at::TensorOptions& options)
    : linear_1(register_module("linear_1", nn::Linear(in_features, hidden, true, options))),
      linear_2(register_module("linear_2", nn::Linear(hidden, hidden, true, options))) {}

at::Tensor MlpEmbedderImpl::forward(const at::Tensor& x) const {
  return linear_2->forward(nn::silu(linear_1->forward(x)));
}

TimeTextEmbedImpl::TimeTextEmbedImpl(int64_t embedding_dim, int64_t pooled_projection_dim, bool guidance_embeds,
                                     const at::TensorOptions& options)
    : timestep_embedder(
          register_module("timestep_embedder", MlpEmbedder(kTimestepChannels, embedding_dim, options))) {
  if (guidance_embeds) {
    guidance_embedder =
        register_module("guidance_embedder", MlpEmbedder(kTimestepChannels, embedding_dim, options));
  }
  text_embedder = register_module("text_embedder", MlpEmbedder(pooled_projection_dim, embedding_dim, options));
}

at::Tensor TimeTextEmbedImpl::forward(const at::Tensor& timestep, const at::Tensor& guidance,
                                      const at::Tensor& pooled) const {
  // The sinusoids are fp32; the reference casts them to the pooled projection's dtype.
  const auto dtype = pooled.scalar_type();
  at::Tensor temb = timestep_embedder->forward(timestep_embedding(timestep, kTimestepChannels).to(dtype));  // [B, D]
  if (has_guidance()) {
    temb = temb + guidance_embedder->forward(timestep_embedding(guidance, kTimestepChannels).to(dtype));
  }
  return temb + text_embedder->forward(pooled);
}

}  // namespace fluxbatch::models::flux
