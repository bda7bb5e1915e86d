// PinnedWeights: the offload mode's host copies. The CPU case checks that taking over a module
// counts every tensor once and changes no value; the CUDA case checks the trips to the device.
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/nn/module.h>

#include <memory>

#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/pinned_weights.h"
#include "fluxbatch/quant/nf4_format.h"
#include "fluxbatch/runtime/device.h"

namespace nn = fluxbatch::nn;
namespace quant = fluxbatch::quant;

namespace {

// A dense Linear and an NF4 one (double quant: every NF4 tensor kind), both under one module.
struct TwoLayers : torch::nn::Module {
  TwoLayers() {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
    dense = register_module("dense", nn::Linear(128, 64, true, bf16));
    packed = register_module("packed", nn::Linear(64, 128, true, bf16));
    dense->weight.copy_(at::randn({64, 128}));
    dense->bias.copy_(at::randn({64}));
    packed->bias.copy_(at::randn({128}));
    packed->set_nf4(quant::quantize_nf4(at::randn({128, 64}).to(at::kBFloat16), /*double_quant=*/true,
                                        quant::BnbBackend::kCpu),
                    std::make_shared<at::Tensor>(), "packed");
  }
  // x: [N, 128] -> [N, 128]
  at::Tensor forward(const at::Tensor& x) const { return packed->forward(dense->forward(x)); }
  nn::Linear dense{nullptr}, packed{nullptr};
};

}  // namespace

TEST_CASE("PinnedWeights on the CPU counts the host bytes and keeps every value", "[nn][offload]") {
  const c10::InferenceMode inference;
  at::manual_seed(3);
  TwoLayers m;
  const at::Tensor x = at::randn({5, 128}).to(at::kBFloat16);
  const at::Tensor before = m.forward(x);
  const int64_t nf4_bytes = static_cast<int64_t>(m.packed->nf4().packed.nbytes() + m.packed->nf4().q8.nbytes() +
                                                 m.packed->nf4().nested_absmax.nbytes() +
                                                 m.packed->nf4().nested_quant_map.nbytes());
  nn::PinnedWeights pinned(m, c10::Device(c10::kCPU));
  CHECK(pinned.host_bytes() == (128 * 64 + 64 + 128) * 2 + nf4_bytes);
  CHECK(at::equal(m.forward(x), before));
  pinned.to_device();  // the device is the host: nothing moves
  CHECK_FALSE(pinned.on_device());
  CHECK(m.dense->weight.is_cpu());
  pinned.to_host();
  CHECK(m.packed->nf4().packed.is_cpu());
  CHECK(at::equal(m.forward(x), before));
}

TEST_CASE("PinnedWeights copies a module to CUDA and back without a copy home", "[nn][offload][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  const c10::InferenceMode inference;
  at::manual_seed(3);
  TwoLayers m;
  const at::Tensor x = at::randn({5, 128}).to(at::kBFloat16);
  const c10::Device cuda(c10::kCUDA, 0);
  nn::PinnedWeights pinned(m, cuda);
  REQUIRE(m.dense->weight.is_pinned());
  REQUIRE(m.packed->nf4().packed.is_pinned());
  REQUIRE(m.packed->nf4().nested_absmax.is_pinned());
  // One page-locked block for the whole module.
  CHECK(m.dense->weight.storage().is_alias_of(m.packed->nf4().packed.storage()));
  CHECK(pinned.host_bytes() == (128 * 64 + 64 + 128) * 2 + static_cast<int64_t>(m.packed->nf4().packed.nbytes() +
                                                                                 m.packed->nf4().q8.nbytes() +
                                                                                 m.packed->nf4().nested_absmax.nbytes() +
                                                                                 m.packed->nf4().nested_quant_map.nbytes()));
  const void* host_weight = m.dense->weight.data_ptr();
  const at::Tensor on_cpu = m.forward(x);

  pinned.to_device();
  CHECK(pinned.on_device());
  CHECK(m.dense->weight.is_cuda());
  CHECK(m.dense->bias.is_cuda());
  CHECK(m.packed->nf4().packed.is_cuda());
  CHECK(m.packed->nf4().q8.is_cuda());
  const at::Tensor on_cuda = m.forward(x.to(cuda)).cpu();
  // Same NF4 codes and bf16 rounding; the GEMMs may sum in another order.
  CHECK(at::allclose(on_cuda.to(at::kFloat), on_cpu.to(at::kFloat), 0.02, 0.05));

  pinned.to_host();
  CHECK_FALSE(pinned.on_device());
  CHECK(m.dense->weight.is_cpu());
  CHECK(m.dense->weight.data_ptr() == host_weight);  // the same host copy, not a copy back
  CHECK(m.packed->nf4().packed.is_pinned());
  CHECK(at::equal(m.forward(x), on_cpu));
  pinned.to_device();  // and again: the host copy was not changed by the trip
  CHECK(at::equal(m.forward(x.to(cuda)).cpu(), on_cuda));
}
