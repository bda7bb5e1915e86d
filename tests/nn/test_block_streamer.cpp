// BlockStreamer: a model's blocks visiting the device one at a time. On the CPU a counting allocator
// stands for the device (the host copies are outside it): the streamed forward must equal the
// resident one bit for bit at every resident count, each block must be home after it ran, and the
// "device" must hold only the resident part and the ring. On CUDA the copies must overlap compute.
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/nn/module.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/block_streamer.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/pinned_weights.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace nn = fluxbatch::nn;
namespace flux = fluxbatch::models::flux;

namespace {

flux::FluxConfig tiny_config() {
  flux::FluxConfig c;
  c.in_channels = 16;
  c.out_channels = 16;
  c.num_layers = 2;
  c.num_single_layers = 3;
  c.attention_head_dim = 16;
  c.num_attention_heads = 2;
  c.joint_attention_dim = 24;
  c.pooled_projection_dim = 20;
  c.axes_dims_rope = {4, 6, 6};
  return c;
}

struct Inputs {
  at::Tensor x, context, pooled, timestep, img_ids, txt_ids, guidance;
};

Inputs tiny_inputs() {
  Inputs in;
  in.x = at::randn({2, 12, 16});
  in.context = at::randn({2, 5, 24});
  in.pooled = at::randn({2, 20});
  in.timestep = at::tensor({0.7f, 0.3f});
  in.img_ids = at::randint(0, 4, {12, 3}).to(at::kFloat);
  in.txt_ids = at::zeros({5, 3});
  in.guidance = at::tensor({3.5f, 2.0f});
  return in;
}

at::Tensor run(const flux::FluxTransformer2DModel& m, const Inputs& in) {
  return m->forward(in.x, in.context, in.pooled, in.timestep, in.img_ids, in.txt_ids, in.guidance);
}

}  // namespace

TEST_CASE("a streamed transformer equals the resident one and holds only its ring", "[nn][stream]") {
  const c10::InferenceMode inference;
  fluxbatch::runtime::CpuMemoryBudget budget(int64_t{1} << 30);  // counts from here on
  at::manual_seed(11);
  flux::FluxTransformer2DModel model(tiny_config(), at::kFloat);
  for (at::Tensor& p : model->parameters()) p.copy_(at::randn(p.sizes()) * 0.2);
  const Inputs in = tiny_inputs();

  budget.reset_peak();
  const int64_t resident_base = budget.live_bytes();
  const at::Tensor want = run(model, in);
  const int64_t resident_peak = budget.peak_bytes() - resident_base;

  nn::BlockStreamer streamer(*model, model->blocks(), c10::Device(c10::kCPU), 2);
  REQUIRE(streamer.blocks() == 5);
  std::vector<torch::nn::Module*> blocks = model->blocks();
  int64_t blocks_bytes = 0;  // as allocated: every tensor's own bytes
  for (torch::nn::Module* b : blocks) {
    for (const at::Tensor& t : nn::module_tensors(*b)) blocks_bytes += static_cast<int64_t>(t.nbytes());
  }
  const auto all_home = [&](torch::nn::Module& m) {
    for (const at::Tensor& t : nn::module_tensors(m)) {
      if (!streamer.host_holds(t)) return false;
    }
    return true;
  };
  REQUIRE(all_home(*model));  // taken over: the counted originals are gone
  int checked = 0;
  bool homes = true;
  model->set_block_hook({[&](int64_t i) { streamer.before_block(i); },
                         [&](int64_t i) {
                           streamer.after_block(i);
                           if (i >= streamer.resident()) {
                             homes = homes && all_home(*blocks[static_cast<size_t>(i)]);
                             ++checked;
                           }
                         }});
  for (const int resident : {0, 1, 2, 4, 5}) {
    INFO("resident blocks " << resident);
    const int64_t copies_before = streamer.copies();
    const int64_t base = budget.live_bytes();
    streamer.to_device(resident);
    const int streamed = 5 - resident;
    CHECK(streamer.slots() == std::min(2, streamed));
    // The "device" holds the non-block part, the resident blocks and the ring, nothing else.
    int64_t resident_bytes = 0;
    for (int b = 0; b < resident; ++b) {
      for (const at::Tensor& t : nn::module_tensors(*blocks[static_cast<size_t>(b)])) resident_bytes += static_cast<int64_t>(t.nbytes());
    }
    const int64_t held = budget.live_bytes() - base;
    CHECK(held >= resident_bytes + streamer.slots() * streamer.slot_bytes());
    CHECK(held <= streamer.other_bytes() + resident_bytes + streamer.slots() * streamer.slot_bytes());
    if (resident == 0) CHECK(held < blocks_bytes);  // the ring and the rest hold less than the blocks
    for (int pass = 0; pass < 2; ++pass) {
      budget.reset_peak();
      checked = 0;
      CHECK(at::equal(run(model, in), want));
      CHECK(checked == streamed);
      CHECK(homes);
      // The activations' peak as in the resident run, over what the "device" holds.
      CHECK(budget.peak_bytes() - base <= held + resident_peak + 4096);
    }
    CHECK(streamer.restarts() == 0);
    // The ring's first fill, then one copy per streamed block per pass.
    CHECK(streamer.copies() - copies_before == streamer.slots() + 2 * streamed);
    int64_t per_step = 0;
    for (int b = resident; b < 5; ++b) per_step += streamer.block_bytes(b);
    CHECK(streamer.streamed_bytes() == per_step);
    streamer.to_host();
    CHECK(all_home(*model));
    CHECK(budget.live_bytes() == base);
  }

  // A pass that stops part-way (an out-of-memory error, say) leaves the ring out of step: the next
  // pass restarts it and still computes the same.
  streamer.to_device(1);
  streamer.before_block(1);
  streamer.after_block(1);
  streamer.before_block(2);  // never finished
  CHECK(at::equal(run(model, in), want));
  CHECK(streamer.restarts() >= 1);
  streamer.to_host();
  CHECK(all_home(*model));
}

#ifdef FLUXBATCH_WITH_CUDA
namespace {

// One block: a few square bf16 products, so that its compute takes about as long as its copy.
struct SquareBlock : torch::nn::Module {
  explicit SquareBlock(int64_t dim) {
    linear = register_module("linear", nn::Linear(dim, dim, true, at::TensorOptions().dtype(at::kBFloat16)));
    linear->weight.copy_(at::randn({dim, dim}) / std::sqrt(static_cast<double>(dim)));
    linear->bias.copy_(at::randn({dim}) * 0.01);
  }
  at::Tensor forward(at::Tensor x, int repeats) const {
    for (int r = 0; r < repeats; ++r) x = linear->forward(x);
    return x;
  }
  nn::Linear linear{nullptr};
};

struct Stack : torch::nn::Module {
  Stack(int n, int64_t dim) {
    for (int i = 0; i < n; ++i) blocks.push_back(register_module("b" + std::to_string(i), std::make_shared<SquareBlock>(dim)));
  }
  std::vector<std::shared_ptr<SquareBlock>> blocks;
};

// Milliseconds `fn` takes on the current stream, by events.
template <typename Fn>
float time_ms(Fn fn) {
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  start.record(stream);
  fn();
  stop.record(stream);
  stop.synchronize();
  return start.elapsed_time(stop);
}

}  // namespace

TEST_CASE("on CUDA the block copies overlap the compute and change no value", "[nn][stream][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  const c10::InferenceMode inference;
  at::manual_seed(5);
  constexpr int kBlocks = 12;
  constexpr int64_t kDim = 4096;  // 32 MiB of bf16 per block
  const c10::Device cuda(c10::kCUDA, 0);
  Stack stack(kBlocks, kDim);
  // [1, L, C]: Linear loops over the leading (image) dimension, so a 2-D [L, C] would run L row products
  // (the first GPU run took 1.2 s of compute that way) instead of one GEMM per block.
  const at::Tensor x = at::randn({1, 4096, kDim}).to(at::kBFloat16).to(cuda);
  // The compute per block is scaled to about the copy's time (measured), so overlap is worth 2x.
  nn::BlockStreamer streamer(stack, [&] {
    std::vector<torch::nn::Module*> out;
    for (auto& b : stack.blocks) out.push_back(b.get());
    return out;
  }(), cuda, 2);
  REQUIRE(streamer.host_bytes() > 0);

  // Serialized references: the copies alone (one after another on one stream) and the compute alone.
  // One block's bytes: slot_bytes() is 0 until blocks are streamed (the first GPU run timed empty copies).
  const int64_t block_bytes = streamer.block_bytes(0);
  REQUIRE(block_bytes >= kDim * kDim * 2);
  at::Tensor slot = at::empty({block_bytes}, at::TensorOptions().dtype(at::kByte).device(cuda));
  const at::Tensor host = nn::pinned_block(block_bytes);
  REQUIRE(host.defined());
  const float copy_ms = time_ms([&] {
    for (int i = 0; i < kBlocks; ++i) slot.copy_(host, /*non_blocking=*/true);
  });
  streamer.to_device(kBlocks);  // all resident
  int repeats = 1;
  stack.blocks[0]->forward(x, 1);  // warm-up (cuBLAS)
  const float one_ms = time_ms([&] { stack.blocks[0]->forward(x, 1); });
  repeats = std::max(1, static_cast<int>(copy_ms / kBlocks / std::max(one_ms, 0.01f)));
  const auto forward = [&](bool stream) {
    at::Tensor y = x;
    for (int i = 0; i < kBlocks; ++i) {
      if (stream) streamer.before_block(i);
      y = stack.blocks[static_cast<size_t>(i)]->forward(y, repeats);
      if (stream) streamer.after_block(i);
    }
    return y;
  };
  at::Tensor want;
  forward(false);  // warm-up
  const float compute_ms = time_ms([&] { want = forward(false); });
  streamer.to_host();

  streamer.to_device(0);  // every block streamed
  forward(true);          // warm-up (the ring's events, the copy stream)
  at::Tensor got;
  const float stream_ms = time_ms([&] { got = forward(true); });
  streamer.to_host();
  INFO("copies " << copy_ms << " ms, compute " << compute_ms << " ms (" << repeats << " products per block), streamed "
                 << stream_ms << " ms");
  CHECK(at::equal(got, want));
  CHECK(streamer.restarts() == 0);
  CHECK(stream_ms < 0.9f * (copy_ms + compute_ms));
}
#endif
