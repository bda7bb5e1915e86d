// NF4 row surgery (weight_map_nf4.h) and the BFL NF4 conversion on synthetic weights.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/weight_map.h"
#include "fluxbatch/models/weight_map_nf4.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <set>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
using namespace fluxbatch::models;

namespace {

quant::Nf4Tensor random_nf4(int64_t rows, int64_t cols, bool nested, uint64_t seed) {
  at::manual_seed(seed);
  return quant::quantize_nf4(at::randn({rows, cols}).to(at::kBFloat16), nested, quant::BnbBackend::kCpu);
}

at::Tensor dense(const quant::Nf4Tensor& w) { return quant::dequantize_nf4(w, at::kBFloat16); }

}  // namespace

TEST_CASE("splitting NF4 rows at 256-block boundaries keeps the 8-bit absmax and every value", "[forge]") {
  // Like FLUX.1's fused qkv: each part 128 x 128 = 256 blocks of 64, one nested block each.
  const auto w = random_nf4(3 * 128, 128, /*nested=*/true, 1);
  const auto parts = split_nf4_rows(w, {128, 128, 128}, "qkv");
  REQUIRE(parts.size() == 3);
  const at::Tensor all = dense(w);
  for (int k = 0; k < 3; ++k) {
    CHECK(parts[k].is_nested());
    CHECK(parts[k].shape == std::vector<int64_t>{128, 128});
    CHECK(parts[k].offset == w.offset);
    CHECK(at::equal(dense(parts[k]), all.narrow(0, 128 * k, 128)));
  }
  // Views, not copies: the split costs no memory.
  CHECK(parts[1].packed.data_ptr() == static_cast<uint8_t*>(w.packed.data_ptr()) + 128 * 128 / 2);
}

TEST_CASE("splitting NF4 rows inside a nested block resolves the absmax to float32, exactly", "[forge]") {
  const auto w = random_nf4(3 * 32 + 128, 32, /*nested=*/true, 2);  // tiny qkv + mlp: 16-block parts
  const auto parts = split_nf4_rows(w, {32, 32, 32, 128}, "linear1");
  const at::Tensor all = dense(w);
  int64_t row = 0;
  for (const auto& p : parts) {
    CHECK_FALSE(p.is_nested());
    CHECK(at::equal(dense(p), all.narrow(0, row, p.shape[0])));
    row += p.shape[0];
  }
  const auto plain = random_nf4(96, 32, /*nested=*/false, 3);
  const auto thirds = split_nf4_rows(plain, {32, 32, 32}, "qkv");
  CHECK(at::equal(dense(thirds[2]), dense(plain).narrow(0, 64, 32)));
}

TEST_CASE("concatenating NF4 rows swaps (shift, scale) halves exactly", "[forge]") {
  for (bool nested : {false, true}) {
    const auto w = random_nf4(2 * 128, 128, nested, 4);
    const auto halves = split_nf4_rows(w, {128, 128}, "ada");
    const auto swapped = concat_nf4_rows({halves[1], halves[0]}, "ada");
    CHECK(swapped.is_nested() == nested);  // 256 blocks per half: the 8-bit statistics stay
    const at::Tensor d = dense(w);
    CHECK(at::equal(dense(swapped), at::cat({d.narrow(0, 128, 128), d.narrow(0, 0, 128)})));
  }
}

TEST_CASE("NF4 rows that do not fall on blocks are refused, naming the weight", "[forge]") {
  const auto w = random_nf4(6, 48, false, 5);  // 48-value rows: row 1 starts inside a block
  CHECK_THROWS_WITH(split_nf4_rows(w, {1, 5}, "w.qkv"), ContainsSubstring("w.qkv") && ContainsSubstring("blocks"));
  CHECK_THROWS_WITH(split_nf4_rows(w, {2, 2}, "w.qkv"), ContainsSubstring("w.qkv") && ContainsSubstring("[6, 48]"));
}

TEST_CASE("read_bnb_nf4 / write_bnb_nf4 round-trip a bitsandbytes serialization", "[forge]") {
  for (bool nested : {false, true}) {
    const auto w = random_nf4(64, 96, nested, 6);
    nn::TensorMap map;
    nn::write_bnb_nf4(map, "lin", w);
    CHECK(map.count("lin.weight.quant_state.bitsandbytes__nf4") == 1);
    CHECK(map.at("lin.weight").sizes() == at::IntArrayRef{64 * 96 / 2, 1});
    std::set<std::string> used;
    const auto back = nn::read_bnb_nf4(map, "lin", &used);
    CHECK(used.size() == map.size());
    CHECK(back.is_nested() == nested);
    CHECK(back.offset == w.offset);
    CHECK(at::equal(dense(back), dense(w)));
  }
}

TEST_CASE("ComfyUI scaled-fp8 text encoders keep scale_weight beside its weight, drop the rest", "[forge]") {
  nn::TensorMap t5 = {{"encoder.block.0.layer.0.SelfAttention.k.weight", at::zeros({4, 4}).to(at::kFloat8_e4m3fn)},
                      {"encoder.block.0.layer.0.SelfAttention.k.scale_weight", at::ones({})},
                      {"encoder.block.0.layer.0.SelfAttention.k.scale_input", at::ones({})},
                      {"scaled_fp8", at::zeros({0}).to(at::kFloat8_e4m3fn)}};
  const nn::TensorMap t5_out = t5_to_transformers(t5);
  CHECK(t5_out.count("encoder.block.0.layer.0.SelfAttention.k.scale_weight") == 1);
  CHECK(t5_out.count("encoder.block.0.layer.0.SelfAttention.k.scale_input") == 0);
  CHECK(t5_out.count("scaled_fp8") == 0);
  nn::TensorMap clip = {{"scaled_fp8", at::zeros({0})}, {"text_model.final_layer_norm.weight", at::ones({4})}};
  CHECK(clip_to_transformers(clip).count("scaled_fp8") == 0);
}
