// Checksums were produced with diffusers' VaeImageProcessor.postprocess on the same inputs.
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "fluxbatch/core/error.h"
#include "fluxbatch/sampling/postprocess.h"

namespace sampling = fluxbatch::sampling;

namespace {

std::pair<int64_t, int64_t> checksums(const at::Tensor& u8) {
  const at::Tensor v = u8.to(at::kLong).flatten();
  const at::Tensor w = at::arange(v.numel(), at::kLong);
  return {v.sum().item<int64_t>(), (v * w).sum().item<int64_t>()};
}

}  // namespace

TEST_CASE("postprocess matches diffusers on a ramp, fp32 and bf16", "[sampling]") {
  const at::Tensor ramp = at::linspace(-1.2, 1.2, 3 * 16 * 16).view({1, 3, 16, 16});
  const at::Tensor f32 = sampling::postprocess_uint8(ramp);
  REQUIRE(f32.sizes() == at::IntArrayRef({1, 16, 16, 3}));
  CHECK(f32.scalar_type() == at::kByte);
  CHECK(checksums(f32) == std::pair<int64_t, int64_t>{97920, 42091801});
  CHECK(checksums(sampling::postprocess_uint8(ramp.to(at::kBFloat16))) == std::pair<int64_t, int64_t>{97849, 42061431});
}

TEST_CASE("postprocess rounds exact halves to even, as numpy does", "[sampling]") {
  int halves = 0;
  for (int n = 64; n < 255; ++n) {
    const float v = static_cast<float>((n + 0.5) / 255.0);
    if (v * 255.0f != static_cast<float>(n) + 0.5f) continue;
    const float x = 2.0f * v - 1.0f;  // x * 0.5 + 0.5 == v exactly
    const at::Tensor image = at::full({1, 3, 1, 1}, x);
    const int want = (n % 2 == 0) ? n : n + 1;
    INFO("n = " << n);
    CHECK(sampling::postprocess_uint8(image)[0][0][0][0].item<uint8_t>() == want);
    ++halves;
  }
  CHECK(halves > 100);
}

TEST_CASE("postprocess clamps and lays out [B,H,W,3]", "[sampling]") {
  at::Tensor image = at::zeros({2, 3, 2, 2});
  image[0][0][0][1] = 5.0;   // clamps to 255
  image[1][2][1][0] = -3.0;  // clamps to 0
  const at::Tensor out = sampling::postprocess_uint8(image);
  CHECK(out.sizes() == at::IntArrayRef({2, 2, 2, 3}));
  CHECK(out.is_contiguous());
  CHECK(out[0][0][1][0].item<uint8_t>() == 255);
  CHECK(out[1][1][0][2].item<uint8_t>() == 0);
  CHECK(out[0][1][1][1].item<uint8_t>() == 128);  // 0.5 * 255 = 127.5 -> 128 (even)
  CHECK_THROWS_AS(sampling::postprocess_uint8(at::zeros({1, 4, 2, 2})), fluxbatch::InputError);
}
