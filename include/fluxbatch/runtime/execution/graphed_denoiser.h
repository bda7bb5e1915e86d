// A sampling::Denoiser that replays one CUDA graph of the model step instead of launching its ~1,500
// kernels one by one. The first step of a denoise call runs eagerly (cuBLAS / cuDNN plans, workspaces and
// the NF4 scratch are made there), the second is captured (shapes are fixed for the call: batch,
// resolution, sequence length), and every later step copies latents and timestep into the graph's input
// buffers and replays it; the conditioning (prompt embeddings, guidance, ids) is captured by address and
// must stay alive and unchanged for the call, as the pipeline's does. Numerically identical to the eager
// steps: the same kernels on the same inputs.
//
// Every step runs on one side stream of the device (capture needs a non-default stream), joined with
// the caller's stream before and after. When a capture fails (out of memory while the graph's private
// pool fills, an operation that cannot be captured) the step and the rest of the call run eagerly and the
// log says why; after a second failure in the process, later calls do not try again.
#pragma once
#include "fluxbatch/sampling/euler.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

namespace fluxbatch::runtime::execution {

class GraphedDenoiser : public sampling::Denoiser {
 public:
  // `eager`: the model step (outlives this object). `enabled`: false (or a CPU model) keeps every step
  // eager. `what`: how the log names the step, e.g. "batch 4 at 1024x1024, 512 tokens". `steps`: how
  // many steps the call will make; a call of fewer than kMinGraphSteps stays eager, since a capture
  // costs about one step of host time with the device idle and each replay saves only the launch gaps.
  GraphedDenoiser(sampling::Denoiser& eager, bool enabled, std::string what, int steps);
  ~GraphedDenoiser() override;

  // latents: [B, S, C], timestep: [B] on the device -> velocity [B, S, C] (a tensor of its own).
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override;

  // Steps served by graph replays so far (0 while eager), and the capture's host time (0 without one).
  int replays() const { return replays_; }
  double capture_ms() const { return capture_ms_; }

  static constexpr int kMinGraphSteps = 12;

 private:
  struct Graph;
  sampling::Denoiser& eager_;
  bool enabled_;
  std::string what_;
  int calls_ = 0;
  int replays_ = 0;
  double capture_ms_ = 0;
  bool failed_ = false;
  std::unique_ptr<Graph> graph_;
};

// What the graphs did in this process (all GraphedDenoisers), for logs and tests.
struct GraphStats {
  int64_t captures = 0;  // graphs captured
  int64_t replays = 0;   // steps served by a replay
  int64_t failures = 0;  // captures that failed (the step ran eagerly)
};
GraphStats graph_stats();

}  // namespace fluxbatch::runtime::execution
