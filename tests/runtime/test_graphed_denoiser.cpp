// execution::GraphedDenoiser: replaying a captured step gives exactly the eager steps' results; a step that
// cannot be captured runs eagerly; on the CPU every step is eager.
#include "fluxbatch/ops/kernel_mode.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/graphed_denoiser.h"
#include "fluxbatch/runtime/execution/pipeline.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>

#include <filesystem>
#include <vector>

using fluxbatch::runtime::execution::graph_stats;
using fluxbatch::runtime::execution::GraphedDenoiser;

namespace {

// A few kernels of the kinds the transformer launches: a GEMM, elementwise ops, a reduction.
class ToyDenoiser : public fluxbatch::sampling::Denoiser {
 public:
  explicit ToyDenoiser(at::Tensor w) : w_(std::move(w)) {}
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override {
    ++calls;
    const at::Tensor h = at::matmul(latents, w_).tanh_();  // [B, S, C]
    return h * timestep.view({-1, 1, 1}) - h.mean(-1, true);
  }
  int calls = 0;

 private:
  at::Tensor w_;
};

// Reads a value back to the host inside the step: not capturable.
class SyncingDenoiser : public fluxbatch::sampling::Denoiser {
 public:
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override {
    const double scale = latents.abs().max().item<double>();
    return latents * timestep.view({-1, 1, 1}) / scale;
  }
};

std::vector<at::Tensor> run(fluxbatch::sampling::Denoiser& denoiser, at::Tensor x, const at::Tensor& t, int steps) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < steps; ++i) {
    at::Tensor v = denoiser.predict(x, t * (1.0 - 0.1 * i));
    out.push_back(v);
    x = x + 0.1 * v;
  }
  return out;
}

}  // namespace

TEST_CASE("GraphedDenoiser on the CPU runs every step eagerly", "[runtime][graphs]") {
  at::manual_seed(1);
  ToyDenoiser toy(at::randn({8, 8}));
  GraphedDenoiser graphed(toy, /*enabled=*/true, "cpu test", 20);
  const at::Tensor x = at::randn({2, 5, 8}), t = at::rand({2});
  const auto want = run(toy, x, t, 4);
  const auto got = run(graphed, x, t, 4);
  for (size_t i = 0; i < want.size(); ++i) CHECK(at::equal(got[i], want[i]));
  CHECK(graphed.replays() == 0);
  CHECK(toy.calls == 8);
}

TEST_CASE("CUDA graph replays equal the eager steps, bit for bit", "[runtime][graphs][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  at::manual_seed(2);
  const auto opt = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  ToyDenoiser toy(at::randn({64, 64}, opt));
  const at::Tensor x = at::randn({3, 100, 64}, opt), t = at::rand({3}, opt);
  const auto want = run(toy, x, t, 6);
  const auto before = graph_stats();
  GraphedDenoiser graphed(toy, /*enabled=*/true, "toy", 20);
  const auto got = run(graphed, x, t, 6);
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("step " << i);
    CHECK(at::equal(got[i], want[i]));
  }
  CHECK(graphed.replays() == 5);  // step 1 eager, step 2 captured and replayed, 3..6 replayed
  CHECK(graph_stats().captures == before.captures + 1);
  GraphedDenoiser off(toy, /*enabled=*/false, "toy", 20);
  run(off, x, t, 3);
  CHECK(off.replays() == 0);
  GraphedDenoiser short_call(toy, /*enabled=*/true, "toy", GraphedDenoiser::kMinGraphSteps - 1);
  run(short_call, x, t, 3);
  CHECK(short_call.replays() == 0);  // too few steps for a capture to pay
}

TEST_CASE("a step that cannot be captured runs eagerly, with the same results", "[runtime][graphs][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  const auto opt = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  SyncingDenoiser syncing;
  const at::Tensor x = at::randn({2, 10, 4}, opt), t = at::rand({2}, opt);
  const auto want = run(syncing, x, t, 4);
  const auto before = graph_stats();
  GraphedDenoiser graphed(syncing, /*enabled=*/true, "syncing", 20);
  const auto got = run(graphed, x, t, 4);
  for (size_t i = 0; i < want.size(); ++i) CHECK(at::equal(got[i], want[i]));
  CHECK(graphed.replays() == 0);
  CHECK(graph_stats().failures == before.failures + 1);
  // The device still works after the abandoned capture, and later steps of other calls capture again.
  at::manual_seed(3);
  ToyDenoiser toy(at::randn({4, 4}, opt));
  GraphedDenoiser again(toy, /*enabled=*/true, "toy", 20);
  run(again, x, t, 3);
  CHECK(again.replays() == 2);
}

TEST_CASE("the pipeline's denoise gives the same latents with and without CUDA graphs", "[runtime][graphs][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  const std::filesystem::path model = std::filesystem::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev";
  fluxbatch::runtime::DenoiseRequest request;
  request.width = request.height = 64;
  request.steps = GraphedDenoiser::kMinGraphSteps;
  request.seeds = {3, 4};
  request.guidance = {3.5, 2.0};
  std::vector<at::Tensor> latents;
  for (bool graphs : {false, true}) {
    fluxbatch::runtime::PipelineOptions options;
    options.device = c10::Device(c10::kCUDA, 0);
    options.dtype = at::kBFloat16;
    options.cuda_graphs = graphs;
    fluxbatch::runtime::FluxPipeline pipeline(model.string(), options);
    const auto embeddings = pipeline.encode_prompts({"a red fox", "a lighthouse"}, 64);
    const auto before = graph_stats();
    latents.push_back(pipeline.denoise(embeddings, request).cpu());
    CHECK(graph_stats().replays - before.replays == (graphs ? request.steps - 1 : 0));
  }
  CHECK(at::equal(latents[0], latents[1]));
}
