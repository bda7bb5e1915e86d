// quant::quantize_nf4 / dequantize_nf4 / the 8-bit dynamic map against bitsandbytes 0.49.2 itself.
#include "bnb_fixtures.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/quant/dynamic8.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;
using quant::BnbBackend;

namespace {

test::BnbFixtures cpu_fixtures() {
  auto f = test::load_bnb_fixtures("cpu");
  if (!f) FAIL(test::bnb_fixture_path("cpu") + " is missing: run scripts/make_nf4_fixtures.py --device cpu");
  return *f;
}

// Bitwise comparison with the context a failure needs.
void check_bits(const std::string& what, const at::Tensor& ours, const at::Tensor& bnb) {
  INFO(what << ": " << test::bits_diff(ours, bnb));
  CHECK(test::bits_equal(ours, bnb));
}

const char* kVariants[] = {"plain", "nested"};

// Every stored field of a quantization, compared with ours.
void check_quantized(const test::BnbFixtures& f, const std::string& prefix, const quant::Nf4Tensor& q) {
  check_bits(prefix + "packed", q.packed, f.at(prefix + "packed"));
  if (q.is_nested()) {
    check_bits(prefix + "offset", at::tensor({q.offset}), f.at(prefix + "offset"));
    check_bits(prefix + "q8", q.q8, f.at(prefix + "q8"));
    check_bits(prefix + "nested_absmax", q.nested_absmax, f.at(prefix + "nested_absmax"));
    check_bits(prefix + "nested_quant_map", q.nested_quant_map, f.at(prefix + "nested_quant_map"));
  } else {
    check_bits(prefix + "absmax", q.absmax, f.at(prefix + "absmax"));
  }
}

// The dequantized outputs the fixtures hold for `prefix`, by name -> dtype.
std::vector<std::pair<std::string, c10::ScalarType>> dequant_outputs(const test::BnbFixtures& f,
                                                                     const std::string& prefix) {
  std::vector<std::pair<std::string, c10::ScalarType>> out;
  for (auto [name, dtype] : {std::pair{"deq_bf16", at::kBFloat16}, {"deq_f16", at::kHalf}, {"deq_f32", at::kFloat}}) {
    if (f.has(prefix + name)) out.emplace_back(name, dtype);
  }
  return out;
}

}  // namespace

TEST_CASE("NF4 code table and dynamic map are bitsandbytes'", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  check_bits("nf4 code", at::tensor(std::vector<float>(quant::kNf4Code.begin(), quant::kNf4Code.end())),
             f.at("nf4_code"));
  check_bits("dynamic map", quant::create_dynamic_map(), f.at("dynamic_map"));
  CHECK(quant::create_dynamic_map()[0].item<float>() > -1.0f);  // -0.99297..., only bnb's CPU kernel writes -1
}

TEST_CASE("8-bit dynamic quantization matches bnb's CPU backend bit for bit", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  REQUIRE(f.dyn_cases.size() >= 6);
  for (const auto& name : f.dyn_cases) {
    const std::string p = "dyn." + name + ".";
    const quant::Dynamic8 q = quant::quantize_dynamic8(f.at(p + "input"), 256, BnbBackend::kCpu);
    check_bits(p + "q8", q.q8, f.at(p + "q8"));
    check_bits(p + "absmax", q.absmax, f.at(p + "absmax"));
    check_bits(p + "code", q.code, f.at(p + "code"));
    const quant::Dynamic8 stored{f.at(p + "q8"), f.at(p + "absmax"), f.at(p + "code")};
    const at::Tensor back = quant::dequantize_dynamic8(stored, 256);
    const at::Tensor expected = stored.code.index({stored.q8.to(at::kLong)}) *
                                stored.absmax.repeat_interleave(256).narrow(0, 0, stored.q8.numel());
    check_bits(p + "dequantized", back, expected);
  }
}

TEST_CASE("8-bit dynamic quantization like CUDA rounds to the nearest code", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  const at::Tensor code = quant::create_dynamic_map();
  for (const auto& name : f.dyn_cases) {
    const at::Tensor x = f.at("dyn." + name + ".input");
    const quant::Dynamic8 q = quant::quantize_dynamic8(x, 256, BnbBackend::kCuda);
    check_bits(name + " code", q.code, code);
    check_bits(name + " absmax", q.absmax, f.at("dyn." + name + ".absmax"));
    // Not bnb-exact here (that needs the GPU fixtures), but never farther than one code from CPU bnb,
    // and always a nearest code up to the midpoint rounding.
    const at::Tensor step = (q.q8.to(at::kInt) - f.at("dyn." + name + ".q8").to(at::kInt)).abs();
    CHECK(step.max().item<int>() <= 1);
    if (name == "zeros") CHECK(q.q8.max().item<int>() == 0);  // 0 * inf = NaN -> code 0, like bnb
  }
  // A value exactly on a code maps to that code.
  const quant::Dynamic8 exact = quant::quantize_dynamic8(code, 256, BnbBackend::kCuda);
  check_bits("codes map to themselves", exact.q8, at::arange(256, at::kInt).to(at::kByte));
}

TEST_CASE("quantize_nf4 like bnb's CPU backend reproduces its bytes", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  REQUIRE(f.nf4_cases.size() >= 8);
  for (const auto& name : f.nf4_cases) {
    const at::Tensor input = f.at(name + ".input");
    for (const char* variant : kVariants) {
      const std::string prefix = name + "." + variant + ".";
      const bool nested = std::string(variant) == "nested";
      const quant::Nf4Tensor q = quant::quantize_nf4(input, nested, BnbBackend::kCpu);
      REQUIRE(q.dtype == input.scalar_type());
      REQUIRE(q.shape == input.sizes().vec());
      REQUIRE_NOTHROW(q.validate(prefix));
      check_quantized(f, prefix, q);
    }
  }
}

TEST_CASE("dequantize_nf4 reproduces bnb's dequantize_4bit values", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  for (const auto& name : f.nf4_cases) {
    for (const char* variant : kVariants) {
      const std::string prefix = name + "." + variant + ".";
      for (const auto& [output, dtype] : dequant_outputs(f, prefix)) {
        const quant::Nf4Tensor w = f.nf4(name, variant, dtype);
        check_bits(prefix + output, quant::dequantize_nf4(w, dtype), f.at(prefix + output));
      }
    }
  }
}

TEST_CASE("quantize_nf4 like CUDA differs from bnb's CPU backend only on exact ties", "[nf4][quant]") {
  const auto f = cpu_fixtures();
  for (const auto& name : f.nf4_cases) {
    const at::Tensor input = f.at(name + ".input");
    const quant::Nf4Tensor q = quant::quantize_nf4(input, false, BnbBackend::kCuda);
    check_bits(name + " absmax", q.absmax, f.at(name + ".plain.absmax"));
    if (name != "edge_f32") check_bits(name + " packed", q.packed, f.at(name + ".plain.packed"));
  }
  // edge_f32 row 1 holds 1.0 (the absmax) then the 15 thresholds and their negatives; row 3 the
  // thresholds one ulp up then one ulp down. On a threshold the tree takes the lower code.
  const at::Tensor edge = f.at("edge_f32.input");
  const quant::Nf4Tensor q = quant::quantize_nf4(edge, false, BnbBackend::kCuda);
  const at::Tensor packed = q.packed;
  auto code_at = [&](int64_t index) {
    const int byte = packed[index / 2].item<uint8_t>();
    return index % 2 ? byte & 0x0F : byte >> 4;
  };
  for (int k = 0; k < 15; ++k) {
    CHECK(code_at(64 * 1 + 1 + k) == k);       // exactly on threshold k: the lower of codes k, k + 1
    CHECK(code_at(64 * 3 + 1 + k) == k + 1);   // one ulp above
    CHECK(code_at(64 * 3 + 16 + k) == k);      // one ulp below
  }
  // The CPU backend's argmin takes the upper code on some ties (4 of the 15 thresholds at absmax 1).
  const at::Tensor cpu = f.at("edge_f32.plain.packed");
  int differing = 0;
  for (int64_t i = 0; i < edge.numel(); ++i) {
    const int ours = code_at(i);
    const int byte = cpu[i / 2].item<uint8_t>();
    const int theirs = i % 2 ? byte & 0x0F : byte >> 4;
    if (ours == theirs) continue;
    ++differing;
    CHECK(theirs == ours + 1);
  }
  CHECK(differing >= 4);
}

TEST_CASE("quantize_nf4 edge cases", "[nf4][quant]") {
  SECTION("a block of zeros stores code 0 and dequantizes to -0.0, like bnb") {
    const quant::Nf4Tensor q = quant::quantize_nf4(at::zeros({2, 64}), false);
    CHECK(q.packed.max().item<int>() == 0);
    const at::Tensor out = quant::dequantize_nf4(q, at::kBFloat16);
    CHECK(at::signbit(out).all().item<bool>());
    CHECK((out == 0).all().item<bool>());
  }
  SECTION("an odd count pads the last low nibble with the code of 0.0") {
    const quant::Nf4Tensor q = quant::quantize_nf4(at::tensor({1.0f, -1.0f, 0.5f}), false);
    REQUIRE(q.packed.numel() == 2);
    CHECK(q.packed[1].item<uint8_t>() == ((0b1100 << 4) | 7));  // 0.5 -> code 12 (0.4407), pad 0.0 -> 7
    const at::Tensor out = quant::dequantize_nf4(q, at::kFloat);
    CHECK(out.sizes() == at::IntArrayRef{3});
    CHECK(out[0].item<float>() == 1.0f);
    CHECK(out[1].item<float>() == -1.0f);
  }
  SECTION("one block, double quantized: absmax - mean is 0, nested absmax 0, absmax recovered") {
    const at::Tensor w = at::linspace(-2.0, 1.5, 64);
    const quant::Nf4Tensor q = quant::quantize_nf4(w, true);
    CHECK(q.nested_absmax.item<float>() == 0.0f);
    CHECK(q.offset == 2.0f);
    CHECK(quant::nf4_block_absmax(q).item<float>() == 2.0f);
  }
  SECTION("quantize -> dequantize error is bounded by half the widest code gap") {
    const at::Tensor w = at::randn({32, 256}, at::TensorOptions().dtype(at::kBFloat16));
    const quant::Nf4Tensor q = quant::quantize_nf4(w, true);
    const at::Tensor back = quant::dequantize_nf4(q, at::kFloat).reshape({-1, 64});
    const at::Tensor ref = w.to(at::kFloat).reshape({-1, 64});
    const at::Tensor scale = ref.abs().amax(1, true);
    CHECK(((back - ref).abs() <= scale * 0.17f).all().item<bool>());  // (1 - 0.6962) / 2 ~ 0.152, + nested error
  }
}

TEST_CASE("Nf4Tensor::validate names the inconsistent field", "[nf4][quant]") {
  const quant::Nf4Tensor good = quant::quantize_nf4(at::randn({4, 128}), true);
  REQUIRE_NOTHROW(good.validate("blk.0"));
  quant::Nf4Tensor bad = good;
  bad.packed = bad.packed.narrow(0, 0, 10);
  CHECK_THROWS_WITH(bad.validate("blk.0"), ContainsSubstring("blk.0: NF4 packed weights has 10 values, expected 256"));
  bad = good;
  bad.nested_quant_map = at::zeros({255});
  CHECK_THROWS_WITH(bad.validate("blk.0"), ContainsSubstring("nested_quant_map has 255 values"));
  bad = good;
  bad.q8 = bad.q8.to(at::kFloat);
  CHECK_THROWS_AS(bad.validate("blk.0"), ModelError);
  bad = good;
  bad.blocksize = 48;
  CHECK_THROWS_WITH(bad.validate("blk.0"), ContainsSubstring("blocksize 48"));
  bad = good;
  bad.absmax = at::zeros({8});
  CHECK_THROWS_WITH(bad.validate("blk.0"), ContainsSubstring("both a float absmax and nested codes"));
}

namespace {

// One code per value, from packed NF4 bytes (high nibble first).
at::Tensor unpack_nf4(const at::Tensor& packed, int64_t n) {
  const at::Tensor bytes = packed.to(at::kInt);
  return at::stack({bytes.bitwise_right_shift(4), bytes.bitwise_and(15)}, 1).reshape(-1).narrow(0, 0, n);
}

// Where our codes and bnb-CUDA's differ, each difference must be one step, for a value whose scaled
// position (x / absmax) lies within a few ulps of the midpoint between the two codes: the only
// thing bnb's approximate reciprocal (MUFU.RCP) can change. Returns how many there are.
int64_t near_tie_differences(const std::string& what, const at::Tensor& ours, const at::Tensor& bnb,
                             const at::Tensor& scaled, const at::Tensor& table) {
  const at::Tensor a = ours.to(at::kLong).reshape(-1);
  const at::Tensor b = bnb.to(at::kLong).reshape(-1);
  const at::Tensor diff = at::nonzero(a != b).reshape(-1);
  for (int64_t j = 0; j < diff.numel(); ++j) {
    const int64_t i = diff[j].item<int64_t>();
    const int64_t lo = std::min(a[i].item<int64_t>(), b[i].item<int64_t>());
    const int64_t hi = std::max(a[i].item<int64_t>(), b[i].item<int64_t>());
    const float mid = (table[lo].item<float>() + table[hi].item<float>()) * 0.5f;
    const float x = scaled[i].item<float>();
    const float ulps = std::fabs(x - mid) / std::fabs(std::nextafter(mid, 2.0f) - mid);
    INFO(what << " value " << i << ": ours " << a[i].item<int64_t>() << ", bnb " << b[i].item<int64_t>()
              << ", x/absmax " << x << " is " << ulps << " ulps from the midpoint");
    CHECK(hi - lo == 1);
    CHECK(ulps <= 4.0f);
  }
  return diff.numel();
}

// x / absmax of every value, absmax per block of `blocksize`.
at::Tensor scaled_by_block(const at::Tensor& x, const at::Tensor& absmax, int64_t blocksize) {
  const at::Tensor flat = x.to(at::kFloat).reshape(-1);
  return flat / absmax.repeat_interleave(blocksize).narrow(0, 0, flat.numel());
}

}  // namespace

TEST_CASE("bitsandbytes CUDA fixtures: quantize_nf4 like kCuda matches bnb on a GPU", "[nf4][quant][bnb-cuda]") {
  const auto f = test::load_bnb_fixtures("cuda");
  if (!f) SKIP(test::bnb_fixture_path("cuda") + " not generated: run scripts/make_nf4_fixtures.py --device cuda on a GPU");
  const at::Tensor nf4_table = f->at("nf4_code");
  int64_t near_ties = 0;
  for (const auto& name : f->nf4_cases) {
    const at::Tensor input = f->at(name + ".input");
    const quant::Nf4Tensor plain = quant::quantize_nf4(input, false, BnbBackend::kCuda);
    check_bits(name + " absmax", plain.absmax, f->at(name + ".plain.absmax"));
    const at::Tensor scaled = scaled_by_block(input, plain.absmax, 64);
    for (const char* variant : kVariants) {
      const std::string prefix = name + "." + variant + ".";
      near_ties += near_tie_differences(prefix + "packed", unpack_nf4(plain.packed, input.numel()),
                                        unpack_nf4(f->at(prefix + "packed"), input.numel()), scaled, nf4_table);
      for (const auto& [output, dtype] : dequant_outputs(*f, prefix)) {
        check_bits(prefix + output, quant::dequantize_nf4(f->nf4(name, variant, dtype), dtype), f->at(prefix + output));
      }
    }
    // bnb takes the double-quant offset as a mean on the GPU: reproduce it there when we can.
    if (!at::hasCUDA()) {
      WARN(name << ": the nested offset is a GPU mean, checked only on a CUDA machine");
      continue;
    }
    const std::string prefix = name + ".nested.";
    const quant::Nf4Tensor nested = quant::quantize_nf4(input.to(at::kCUDA), true, BnbBackend::kCuda).to(at::kCPU);
    check_bits(prefix + "offset", at::tensor({nested.offset}), f->at(prefix + "offset"));
    check_bits(prefix + "nested_absmax", nested.nested_absmax, f->at(prefix + "nested_absmax"));
    check_bits(prefix + "nested_quant_map", nested.nested_quant_map, f->at(prefix + "nested_quant_map"));
    const at::Tensor centered = scaled_by_block(plain.absmax - nested.offset, nested.nested_absmax, 256);
    near_ties += near_tie_differences(prefix + "q8", nested.q8, f->at(prefix + "q8"), centered,
                                      quant::create_dynamic_map());
  }
  for (const auto& name : f->dyn_cases) {
    const std::string p = "dyn." + name + ".";
    const quant::Dynamic8 q = quant::quantize_dynamic8(f->at(p + "input"), 256, BnbBackend::kCuda);
    check_bits(p + "absmax", q.absmax, f->at(p + "absmax"));
    check_bits(p + "code", q.code, f->at(p + "code"));
    near_ties += near_tie_differences(p + "q8", q.q8, f->at(p + "q8"), scaled_by_block(f->at(p + "input"), q.absmax, 256),
                                      q.code);
  }
  if (near_ties > 0) WARN(near_ties << " codes differ from bnb-CUDA on values within 4 ulps of a threshold (MUFU.RCP)");
}
