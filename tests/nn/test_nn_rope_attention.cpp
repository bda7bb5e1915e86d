// nn::rope_1d / apply_rope against the complex-number definition, nn::attention against softmax(QK^T)V.
#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/attention.h"
#include "fluxbatch/nn/rope.h"

#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <cmath>

namespace {

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace

TEST_CASE("rope_1d tables hold cos/sin of pos * theta^(-2j/dim), each repeated for the pair", "[nn]") {
  const at::Tensor pos = at::tensor({0.0, 1.0, 5.0, 63.0}, at::kFloat);
  const auto tables = fluxbatch::nn::rope_1d(6, pos, 10000.0);
  REQUIRE(tables.cos.sizes() == at::IntArrayRef({4, 6}));
  CHECK(tables.cos.scalar_type() == at::kFloat);
  for (int64_t s = 0; s < 4; ++s) {
    for (int64_t d = 0; d < 6; ++d) {
      const double angle = pos[s].item<double>() * std::pow(10000.0, -2.0 * static_cast<double>(d / 2) / 6.0);
      CHECK(tables.cos[s][d].item<float>() == static_cast<float>(std::cos(angle)));
      CHECK(tables.sin[s][d].item<float>() == static_cast<float>(std::sin(angle)));
    }
  }
  CHECK_THROWS_AS(fluxbatch::nn::rope_1d(5, pos, 10000.0), fluxbatch::ModelError);
}

TEST_CASE("apply_rope rotates each (2j, 2j+1) pair like a complex multiplication", "[nn]") {
  at::manual_seed(4);
  const int64_t seq = 5, dim = 8;
  const at::Tensor x = at::randn({2, seq, 3, dim});
  const auto tables = fluxbatch::nn::rope_1d(dim, at::arange(seq, at::kFloat) * 3, 10000.0);
  const at::Tensor out = fluxbatch::nn::apply_rope(x, tables);

  const at::Tensor z = at::view_as_complex(x.unflatten(-1, {-1, 2}).contiguous());  // [2, S, 3, D/2]
  const at::Tensor angle = at::atan2(tables.sin, tables.cos).slice(-1, 0, dim, 2);   // [S, D/2]
  const at::Tensor rotated = at::view_as_real(z * at::polar(at::ones_like(angle), angle).unsqueeze(1)).flatten(-2);
  CHECK(max_diff(out, rotated) < 1e-5);

  SECTION("position 0 is the identity, and the dtype is kept") {
    const auto zero = fluxbatch::nn::rope_1d(dim, at::zeros({seq}), 10000.0);
    CHECK(at::equal(fluxbatch::nn::apply_rope(x, zero), x));
    const at::Tensor xb = x.to(at::kBFloat16);
    CHECK(fluxbatch::nn::apply_rope(xb, tables).scalar_type() == at::kBFloat16);
  }
}

TEST_CASE("nn::attention is softmax(q k^T / sqrt(d)) v over [B, S, H, D] tensors", "[nn]") {
  at::manual_seed(5);
  const at::Tensor q = at::randn({2, 7, 3, 16});
  const at::Tensor k = at::randn({2, 9, 3, 16});
  const at::Tensor v = at::randn({2, 9, 3, 16});
  const at::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);  // [B, H, S, D]
  const at::Tensor probs = at::softmax(at::matmul(qh, kh.transpose(-1, -2)) / 4.0, -1);
  const at::Tensor expected = at::matmul(probs, vh).transpose(1, 2).reshape({2, 7, 48});
  const at::Tensor out = fluxbatch::nn::attention(q, k, v);
  CHECK(max_diff(out, expected) < 1e-5);

  SECTION("a boolean mask hides keys") {
    const at::Tensor mask = at::arange(9).lt(4).view({1, 1, 1, 9});  // attend to the first 4 keys only
    const at::Tensor masked = fluxbatch::nn::attention(q, k, v, mask);
    const at::Tensor first = fluxbatch::nn::attention(q, k.slice(1, 0, 4), v.slice(1, 0, 4));
    CHECK(max_diff(masked, first) < 1e-5);
  }
  SECTION("an explicit scale replaces 1/sqrt(d)") {
    const at::Tensor unscaled = fluxbatch::nn::attention(q, k, v, std::nullopt, 1.0);
    const at::Tensor p1 = at::softmax(at::matmul(qh, kh.transpose(-1, -2)), -1);
    CHECK(max_diff(unscaled, at::matmul(p1, vh).transpose(1, 2).reshape({2, 7, 48})) < 1e-5);
  }
  CHECK_THROWS_AS(fluxbatch::nn::attention(q[0], k, v), fluxbatch::InputError);
}
