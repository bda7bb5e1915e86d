// Noise values were produced with torch 2.11: torch.randn((1,16,4,6), generator=torch.Generator().manual_seed(s), dtype=d).
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/sampling/latents.h"

namespace sampling = fluxbatch::sampling;

TEST_CASE("latent_size follows diffusers' 2 * (side // 16)", "[sampling]") {
  const auto s = sampling::latent_size(1024, 768);
  CHECK(s.height == 128);
  CHECK(s.width == 96);
  CHECK(s.seq_len() == 64 * 48);
  const auto odd = sampling::latent_size(72, 100);  // rounds down to 64 x 96
  CHECK(odd.height == 8);
  CHECK(odd.width == 12);
  CHECK_THROWS_AS(sampling::latent_size(8, 64), fluxbatch::InputError);
}

TEST_CASE("pack_latents puts 2x2 patches in token i*(w/2)+j, feature c*4+dy*2+dx", "[sampling]") {
  const int64_t B = 2, C = 3, h = 4, w = 6;
  const at::Tensor x = at::arange(B * C * h * w, at::kFloat).view({B, C, h, w});
  const at::Tensor p = sampling::pack_latents(x);
  REQUIRE(p.sizes() == at::IntArrayRef({B, (h / 2) * (w / 2), 4 * C}));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx) {
          const int64_t token = (y / 2) * (w / 2) + xx / 2;
          const int64_t feature = c * 4 + (y % 2) * 2 + xx % 2;
          REQUIRE(p[b][token][feature].item<float>() == x[b][c][y][xx].item<float>());
        }
  const at::Tensor back = sampling::unpack_latents(p, sampling::LatentSize{h, w});
  CHECK(at::equal(back, x));
  CHECK_THROWS_AS(sampling::unpack_latents(p, sampling::LatentSize{h, w + 2}), fluxbatch::InputError);
  CHECK_THROWS_AS(sampling::pack_latents(at::zeros({1, 3, 5, 4})), fluxbatch::InputError);
}

TEST_CASE("latent image ids and text ids", "[sampling]") {
  const at::Tensor ids = sampling::latent_image_ids(sampling::LatentSize{4, 6}, at::kBFloat16, at::kCPU);
  REQUIRE(ids.sizes() == at::IntArrayRef({6, 3}));
  CHECK(ids.scalar_type() == at::kBFloat16);
  const at::Tensor want = at::tensor({0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 1, 0, 0, 1, 1, 0, 1, 2}, at::kFloat).view({6, 3});
  CHECK(at::equal(ids.to(at::kFloat), want));
  const at::Tensor t = sampling::text_ids(7, at::kFloat, at::kCPU);
  CHECK(t.sizes() == at::IntArrayRef({7, 3}));
  CHECK(t.abs().sum().item<float>() == 0.0f);
}

namespace {

at::Tensor draw(uint64_t seed, at::ScalarType dtype) {
  // 4x6 latent grid -> one [1, 6, 64] packed image; unpack to compare with torch's draw order.
  const sampling::LatentSize size{4, 6};
  return sampling::unpack_latents(sampling::initial_noise({seed}, 16, size, dtype, at::kCPU), size);
}

void check_first(const at::Tensor& noise, const std::vector<float>& want, double sum) {
  const at::Tensor flat = noise.to(at::kFloat).flatten();
  for (size_t i = 0; i < want.size(); ++i) CHECK(flat[static_cast<int64_t>(i)].item<float>() == want[i]);
  CHECK(flat.to(at::kDouble).sum().item<double>() == sum);
}

}  // namespace

TEST_CASE("initial noise equals torch.randn with a CPU generator per seed", "[sampling]") {
  check_first(draw(0, at::kFloat), {-0x1.20370ap+0f, -0x1.270114p+0f, -0x1.0097acp-2f, -0x1.bc4abap-2f},
              0x1.00b6ac0314p+4);
  check_first(draw(42, at::kFloat), {0x1.ed4a52p+0f, 0x1.7cbea6p+0f, 0x1.cd2acep-1f, -0x1.0d81b6p+1f},
              0x1.38d5cc61b8p+4);
  check_first(draw(9223372036854775813ULL, at::kFloat),
              {0x1.d7a2eep+0f, 0x1.09ab94p-1f, -0x1.b6407ap+0f, -0x1.b38d98p+0f}, 0x1.d47f1b664p+2);
  // bf16 is drawn in bf16 (not fp32 then cast): different values.
  check_first(draw(0, at::kBFloat16), {0x1.76p+0f, 0x1.2ap-2f, 0x1.ecp-1f, 0x1.92p+0f}, 0x1.5e913cp+4);
  check_first(draw(42, at::kBFloat16), {-0x1.9ep-1f, -0x1.88p+0f, 0x1.ap-2f, 0x1.6p-3f}, 0x1.5e6704p+3);
  check_first(draw(9223372036854775813ULL, at::kBFloat16), {0x1.fp-1f, 0x1.66p+0f, 0x1.e2p+0f, -0x1.7ap-4f},
              -0x1.935ee8p+2);
}

TEST_CASE("an image's noise does not depend on the rest of the batch", "[sampling]") {
  const sampling::LatentSize size{4, 6};
  const at::Tensor batch = sampling::initial_noise({7, 42, 7, 1}, 16, size, at::kBFloat16, at::kCPU);
  REQUIRE(batch.sizes() == at::IntArrayRef({4, 6, 64}));
  CHECK(batch.scalar_type() == at::kBFloat16);
  const at::Tensor single = sampling::initial_noise({42}, 16, size, at::kBFloat16, at::kCPU);
  CHECK(at::equal(batch[1], single[0]));
  CHECK(at::equal(batch[0], batch[2]));
  CHECK_FALSE(at::equal(batch[0], batch[1]));
  CHECK_THROWS_AS(sampling::initial_noise({}, 16, size, at::kFloat, at::kCPU), fluxbatch::InputError);
}
