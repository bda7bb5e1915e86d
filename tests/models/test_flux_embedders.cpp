// FLUX conditioning pieces against their definitions: the timestep sinusoid and FluxPosEmbed.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/embedders.h"
#include "fluxbatch/models/flux/rope.h"

#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <cmath>

using namespace fluxbatch::models::flux;

TEST_CASE("timestep_embedding is [cos(t f_k), sin(t f_k)] in fp32 with f_k = 10000^(-k/half)", "[flux]") {
  const at::Tensor t = at::tensor({0.0, 988.0, 3504.0}).to(at::kBFloat16);
  const at::Tensor emb = timestep_embedding(t, 8);
  REQUIRE(emb.sizes() == at::IntArrayRef({3, 8}));
  CHECK(emb.scalar_type() == at::kFloat);
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t k = 0; k < 4; ++k) {
      const double arg = t[b].item<double>() * std::exp(-std::log(10000.0) * k / 4.0);
      CHECK(std::abs(emb[b][k].item<double>() - std::cos(arg)) < 2e-3);
      CHECK(std::abs(emb[b][k + 4].item<double>() - std::sin(arg)) < 2e-3);
    }
  }
  const at::Tensor sin_first = timestep_embedding(t, 8, /*flip_sin_to_cos=*/false);
  CHECK(at::equal(sin_first.slice(1, 0, 4), emb.slice(1, 4, 8)));
  const at::Tensor odd = timestep_embedding(t, 9);
  CHECK(odd.size(1) == 9);
  CHECK(at::equal(odd.select(1, 8), at::zeros({3})));
}

TEST_CASE("flux_pos_embed concatenates one rope table per id column", "[flux]") {
  const at::Tensor ids = at::tensor({0, 0, 0, 0, 2, 3, 0, 1, 5}, at::kFloat).view({3, 3});
  const auto tables = flux_pos_embed(ids, {4, 6, 6});
  REQUIRE(tables.cos.sizes() == at::IntArrayRef({3, 16}));
  const auto axis1 = fluxbatch::nn::rope_1d(6, ids.select(1, 1), kRopeTheta);
  const auto axis2 = fluxbatch::nn::rope_1d(6, ids.select(1, 2), kRopeTheta);
  CHECK(at::equal(tables.cos.slice(1, 4, 10), axis1.cos));
  CHECK(at::equal(tables.sin.slice(1, 10, 16), axis2.sin));
  CHECK(at::equal(tables.cos.slice(1, 0, 4), at::ones({3, 4})));  // axis 0 is all zeros for FLUX.1
  CHECK(at::equal(tables.cos[0], at::ones({16})));                  // text tokens: identity rotation
  CHECK_THROWS_AS(flux_pos_embed(ids, {8, 8}), fluxbatch::InputError);
}
