// per_image_linear: image b of a batch is exactly what at::linear gives for that image alone.
#include "fluxbatch/ops/per_image_linear.h"
#include "fluxbatch/runtime/device.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>

#include <vector>

using fluxbatch::ops::per_image_linear;

namespace {

// Each image of x through at::linear alone, compared bit for bit with the batched call.
void check_against_alone(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const at::Tensor batched = per_image_linear(x, w, bias);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.size(0);
  REQUIRE(batched.sizes() == at::IntArrayRef(shape));
  for (int64_t b = 0; b < x.size(0); ++b) {
    INFO("image " << b);
    const at::Tensor alone = at::linear(x.narrow(0, b, 1).contiguous(), w, bias);
    CHECK(at::equal(batched.narrow(0, b, 1), alone));
    CHECK(at::equal(per_image_linear(x.narrow(0, b, 1), w, bias), alone));  // a batch of one
  }
}

}  // namespace

TEST_CASE("per_image_linear gives each image what at::linear gives it alone", "[ops][linear]") {
  at::manual_seed(5);
  const at::Tensor w = at::randn({24, 40});
  const at::Tensor bias = at::randn({24});
  check_against_alone(at::randn({3, 7, 40}), w, bias);          // [B, S, K]
  check_against_alone(at::randn({3, 7, 40}), w, at::Tensor());  // no bias: mm
  check_against_alone(at::randn({5, 40}), w, bias);             // [B, K]: one row per image
  check_against_alone(at::randn({2, 40, 7}).transpose(1, 2), w, bias);  // strided input
  const at::Tensor row = at::randn({40});
  CHECK(at::equal(per_image_linear(row, w, bias), at::linear(row, w, bias)));  // 1-D: one image
  CHECK_THROWS_AS(per_image_linear(at::randn({2, 39}), w, bias), std::invalid_argument);
}

TEST_CASE("on CUDA, per_image_linear does not depend on the batch size", "[ops][linear][cuda]") {
  if (!fluxbatch::runtime::cuda_available()) SKIP("no CUDA device on this machine");
  at::manual_seed(5);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  // FLUX-like shapes, where a GEMM library's kernel choice changes with the row count.
  const at::Tensor w = at::randn({3072, 3072}, bf16);
  const at::Tensor bias = at::randn({3072}, bf16);
  check_against_alone(at::randn({4, 1024, 3072}, bf16), w, bias);
  check_against_alone(at::randn({8, 3072}, bf16), at::randn({18432, 3072}, bf16), at::randn({18432}, bf16));
}
