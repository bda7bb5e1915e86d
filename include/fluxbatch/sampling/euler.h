// The flow-match Euler sampler loop of FluxPipeline, with the model behind a one-method interface
// so the loop is testable without weights.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>

#include "fluxbatch/sampling/schedule.h"

namespace fluxbatch::sampling {

// The velocity model. Conditioning (prompt embeddings, guidance, ids) lives in the implementation.
class Denoiser {
 public:
  virtual ~Denoiser() = default;
  // latents: [B, S, C]; timestep: [B] in the latents' dtype, already divided by 1000 exactly as
  // FluxPipeline passes it (t.expand(B).to(dtype) / 1000). Returns the velocity [B, S, C].
  virtual at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) = 0;
};

// One scheduler.step: sample.to(float32) + (sigmas[i+1] - sigmas[i]) * model_output, cast back to
// model_output's dtype. `sigmas` is the [steps+1] float32 tensor on the latents' device; dt is a
// 0-dim float32 tensor, so with a bf16 model dt and the product are rounded to bf16, as in diffusers.
at::Tensor euler_step(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& sigmas,
                      int64_t index);

// Called after each step with the step index (0-based) and the new latents.
using StepCallback = std::function<void(int step, const at::Tensor& latents)>;

// Runs every step of `schedule` from the packed initial latents [B, S, C]; returns the final
// latents in the initial latents' dtype, on their device.
at::Tensor sample_euler(Denoiser& denoiser, at::Tensor latents, const FlowSchedule& schedule,
                        const StepCallback& on_step = {});

}  // namespace fluxbatch::sampling
