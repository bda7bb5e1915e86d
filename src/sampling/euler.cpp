#include "fluxbatch/sampling/euler.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

namespace fluxbatch::sampling {

at::Tensor euler_step(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& sigmas,
                      int64_t index) {
  FLUXBATCH_CHECK(sample.sizes() == model_output.sizes(), InputError,
                  "euler_step: sample " + c10::str(sample.sizes()) + " and model output " +
                      c10::str(model_output.sizes()) + " differ in shape");
  const at::Tensor dt = sigmas[index + 1] - sigmas[index];
  const at::Tensor prev = sample.to(at::kFloat) + dt * model_output;
  return prev.to(model_output.scalar_type());
}

at::Tensor sample_euler(Denoiser& denoiser, at::Tensor latents, const FlowSchedule& schedule,
                        const StepCallback& on_step) {
  const auto steps = static_cast<int64_t>(schedule.timesteps.size());
  FLUXBATCH_CHECK(steps >= 1 && schedule.sigmas.size() == schedule.timesteps.size() + 1, InputError,
                  "sample_euler: schedule needs steps + 1 sigmas");
  const auto on_device = at::TensorOptions().dtype(at::kFloat).device(latents.device());
  const at::Tensor sigmas = at::tensor(schedule.sigmas, at::kFloat).to(on_device);
  const at::Tensor timesteps = at::tensor(schedule.timesteps, at::kFloat).to(on_device);
  const int64_t batch = latents.size(0);
  for (int64_t i = 0; i < steps; ++i) {
    // FluxPipeline: timestep = t.expand(B).to(latents.dtype); transformer(timestep=timestep / 1000)
    const at::Tensor timestep = timesteps[i].expand({batch}).to(latents.scalar_type()) / 1000;
    const at::Tensor velocity = denoiser.predict(latents, timestep);
    FLUXBATCH_CHECK(velocity.sizes() == latents.sizes(), ModelError,
                    "denoiser returned " + c10::str(velocity.sizes()) + " for latents " + c10::str(latents.sizes()));
    latents = euler_step(latents, velocity, sigmas, i);
    if (on_step) on_step(static_cast<int>(i), latents);
  }
  return latents;
}

}  // namespace fluxbatch::sampling
