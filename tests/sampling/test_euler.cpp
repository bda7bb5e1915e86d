#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/sampling/euler.h"

namespace sampling = fluxbatch::sampling;

namespace {

// A stand-in velocity model: returns latents * scale + timestep, and records every call.
class StubDenoiser : public sampling::Denoiser {
 public:
  explicit StubDenoiser(double scale) : scale_(scale) {}
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override {
    timesteps.push_back(timestep.clone());
    return latents * scale_ + timestep.view({-1, 1, 1});
  }
  std::vector<at::Tensor> timesteps;

 private:
  double scale_;
};

}  // namespace

TEST_CASE("euler_step is sample + (sigma_next - sigma) * velocity", "[sampling]") {
  const at::Tensor sigmas = at::tensor(std::vector<float>{1.0f, 0.75f, 0.0f});
  const at::Tensor x = at::full({1, 2, 4}, 2.0f);
  const at::Tensor v = at::full({1, 2, 4}, 4.0f);
  CHECK(at::allclose(sampling::euler_step(x, v, sigmas, 0), at::full({1, 2, 4}, 1.0f)));
  CHECK(at::allclose(sampling::euler_step(x, v, sigmas, 1), at::full({1, 2, 4}, -1.0f)));
  CHECK_THROWS_AS(sampling::euler_step(x, at::zeros({1, 4, 2}), sigmas, 0), fluxbatch::InputError);
}

TEST_CASE("euler_step in bf16 reproduces diffusers' mixed-precision arithmetic", "[sampling]") {
  const at::Tensor sigmas = at::tensor(std::vector<float>{0x1.fa10b2p-1f, 0x1.f3d36ep-1f});
  const at::Tensor x = at::randn({2, 8, 16}).to(at::kBFloat16);
  const at::Tensor v = at::randn({2, 8, 16}).to(at::kBFloat16);
  const at::Tensor got = sampling::euler_step(x, v, sigmas, 0);
  CHECK(got.scalar_type() == at::kBFloat16);
  // 0-dim fp32 dt x bf16 velocity is a bf16 op: dt itself and the product are rounded to bf16 before
  // the fp32 add (checked against torch 2.11: the unrounded dt gives different bits).
  const float dt = at::scalar_tensor(0x1.f3d36ep-1f - 0x1.fa10b2p-1f, at::kBFloat16).item<float>();
  const at::Tensor product = (v.to(at::kFloat) * dt).to(at::kBFloat16).to(at::kFloat);
  const at::Tensor want = (x.to(at::kFloat) + product).to(at::kBFloat16);
  CHECK(at::equal(got, want));
}

TEST_CASE("sample_euler drives the denoiser over the schedule", "[sampling]") {
  sampling::FlowSchedule schedule;
  schedule.sigmas = {1.0f, 0.5f, 0.25f, 0.0f};
  schedule.timesteps = {1000.0f, 500.0f, 250.0f};
  StubDenoiser stub(-1.0);
  const at::Tensor x0 = at::arange(12, at::kFloat).view({2, 3, 2});
  std::vector<at::Tensor> seen;
  const at::Tensor out =
      sampling::sample_euler(stub, x0, schedule, [&](int step, const at::Tensor& latents) {
        CHECK(step == static_cast<int>(seen.size()));
        seen.push_back(latents.clone());
      });

  // Reference loop in plain arithmetic.
  at::Tensor x = x0.clone();
  for (size_t i = 0; i < 3; ++i) {
    const float t = schedule.timesteps[i] / 1000.0f;
    x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (-x + t);
    REQUIRE(at::allclose(seen[i], x));
  }
  CHECK(at::allclose(out, x));
  REQUIRE(stub.timesteps.size() == 3);
  CHECK(stub.timesteps[1].sizes() == at::IntArrayRef({2}));
  CHECK(stub.timesteps[1][1].item<float>() == 0.5f);
  CHECK(stub.timesteps[2][0].item<float>() == 0.25f);
}

TEST_CASE("sample_euler quantises the timestep to the latents' dtype before / 1000", "[sampling]") {
  sampling::FlowSchedule schedule;
  schedule.sigmas = {0x1.fa10b2p-1f, 0.0f};       // 988.41 * 1000
  schedule.timesteps = {0x1.ee344ep+9f};
  StubDenoiser stub(0.0);
  sampling::sample_euler(stub, at::zeros({1, 4, 4}, at::kBFloat16), schedule);
  REQUIRE(stub.timesteps.size() == 1);
  CHECK(stub.timesteps[0].scalar_type() == at::kBFloat16);
  // bf16(988.41) = 988, 988 / 1000 rounded to bf16.
  const float want = at::scalar_tensor(988.0 / 1000.0, at::kBFloat16).item<float>();
  CHECK(stub.timesteps[0][0].item<float>() == want);
}
