// quant::Fp8Tensor (per-channel e4m3 weights) and ops::quantize_fp8_rows / fp8_linear (per-token e4m3
// activations and the fp8 GEMM): round trips against the definitions, the checkpoint forms, and on CUDA the
// kernels against the CPU reference.
#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fluxbatch/ops/modulated_layer_norm.h"
#include "fluxbatch/quant/fp8_format.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <utility>
#include <vector>

using namespace fluxbatch;

namespace {

double rel_l2(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU).to(at::kDouble), y = b.to(at::kCPU).to(at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

// e4m3 keeps 3 mantissa bits: rounding to nearest moves a normal value by at most half a step, 2^-4 of it.
constexpr double kE4m3Relative = 1.0 / 16;

}  // namespace

TEST_CASE("per-channel fp8 weights: each row's absmax lands on 448, values within e4m3 rounding", "[quant][fp8]") {
  at::manual_seed(1);
  at::Tensor w = at::randn({24, 40}) * at::rand({24, 1}) * 10;
  w[3].zero_();  // a row of zeros gets scale 1
  const quant::Fp8Tensor q = quant::quantize_fp8_per_channel(w.to(at::kBFloat16));
  q.validate("test");
  CHECK(q.data.scalar_type() == at::kFloat8_e4m3fn);
  CHECK(q.scale.scalar_type() == at::kFloat);
  CHECK(q.scale[3].item<float>() == 1.0f);
  const at::Tensor wb = w.to(at::kBFloat16).to(at::kFloat);
  const at::Tensor absmax = wb.abs().amax(1);
  for (int64_t n = 0; n < 24; ++n) {
    if (n == 3) continue;
    INFO("row " << n);
    CHECK(q.scale[n].item<float>() == absmax[n].item<float>() / 448.0f);
    CHECK(q.data[n].to(at::kFloat).abs().max().item<float>() == 448.0f);  // the largest value uses the range
  }
  const at::Tensor back = quant::dequantize_fp8(q, at::kFloat);
  const at::Tensor err = (back - wb).abs();
  // Per value: within half an e4m3 step (normal values), or half the subnormal step 2^-9 (scaled).
  const at::Tensor bound = wb.abs() * kE4m3Relative + q.scale.unsqueeze(1) * std::ldexp(1.0, -10);
  CHECK((err <= bound * 1.0001).all().item<bool>());
  CHECK(rel_l2(back, wb) < 0.03);
  CHECK_THROWS_AS(quant::quantize_fp8_per_channel(at::randn({4})), std::invalid_argument);
}

TEST_CASE("per-tensor fp8 weights (scaled-fp8 files): the tensor's absmax lands on 448, one scale on every row",
          "[quant][fp8]") {
  at::manual_seed(3);
  const at::Tensor w = (at::randn({32, 48}) * at::linspace(0.01, 4.0, 32).unsqueeze(1)).to(at::kBFloat16);
  const quant::Fp8Tensor q = quant::quantize_fp8_per_tensor(w);
  q.validate("per-tensor");
  const float absmax = w.to(at::kFloat).abs().max().item<float>();
  CHECK(q.scale.min().item<float>() == q.scale.max().item<float>());
  CHECK(q.scale[0].item<float>() == absmax / quant::kFp8E4m3Max);
  CHECK(q.data.to(at::kFloat).abs().max().item<float>() == quant::kFp8E4m3Max);
  // Each value within half an e4m3 step of its own magnitude (3 mantissa bits: relative 1/16) or the
  // subnormal spacing times the scale.
  const at::Tensor back = quant::dequantize_fp8(q, at::kFloat);
  const at::Tensor err = (back - w.to(at::kFloat)).abs();
  const at::Tensor bound = w.to(at::kFloat).abs() / 16 + q.scale[0] * std::ldexp(1.0, -10);
  CHECK(at::le(err, bound).all().item<bool>());
  // Rows of small values keep less precision than per-channel scales give them: the trade the format makes.
  const at::Tensor per_channel_err = (quant::dequantize_fp8(quant::quantize_fp8_per_channel(w), at::kFloat) -
                                      w.to(at::kFloat)).abs().sum();
  CHECK(per_channel_err.item<float>() < err.sum().item<float>());
  // Zeros: scale 1, not a division by zero.
  const quant::Fp8Tensor zeros = quant::quantize_fp8_per_tensor(at::zeros({2, 3}));
  CHECK(zeros.scale[0].item<float>() == 1.0f);
  CHECK(zeros.data.to(at::kFloat).abs().sum().item<float>() == 0.0f);
}

TEST_CASE("an fp8 checkpoint's per-tensor scale becomes every row's scale, values kept", "[quant][fp8]") {
  const at::Tensor stored = (at::randn({6, 8}) * 50).clamp(-448, 448).to(at::kFloat8_e4m3fn);
  const quant::Fp8Tensor plain = quant::fp8_from_checkpoint(stored, 1.0f);
  const quant::Fp8Tensor scaled = quant::fp8_from_checkpoint(stored, 0.0125f);
  CHECK(at::equal(plain.data.view(at::kByte), stored.view(at::kByte)));
  CHECK(at::equal(quant::dequantize_fp8(plain, at::kFloat), stored.to(at::kFloat)));
  CHECK(at::equal(quant::dequantize_fp8(scaled, at::kFloat), stored.to(at::kFloat) * 0.0125f));
  quant::Fp8Tensor broken = plain;
  broken.scale = at::ones({5});
  CHECK_THROWS_AS(broken.validate("w"), ModelError);
}

TEST_CASE("fp8 activation rows and the fp8 GEMM reference", "[ops][fp8]") {
  at::manual_seed(2);
  const at::Tensor x = at::randn({2, 5, 32}) * at::rand({2, 5, 1}) * 4;
  x[1][2].zero_();
  const ops::Fp8Rows rows = ops::quantize_fp8_rows(x.to(at::kBFloat16));
  REQUIRE(rows.data.sizes() == x.sizes());
  REQUIRE(rows.scale.sizes() == at::IntArrayRef({2, 5}));
  CHECK(rows.scale[1][2].item<float>() == 1.0f);
  CHECK(rows.data.to(at::kFloat).abs().amax(-1).max().item<float>() == 448.0f);
  CHECK(rel_l2(ops::dequantize_fp8_rows(rows, at::kFloat), x.to(at::kBFloat16)) < 0.03);

  const at::Tensor w = at::randn({12, 32}) / 6;
  const at::Tensor bias = at::randn({12});
  const quant::Fp8Tensor wq = quant::quantize_fp8_per_channel(w);
  const at::Tensor y = ops::fp8_linear(rows, wq, bias, at::kFloat);
  // Exactly the fp32 GEMM of the dequantized operands.
  const at::Tensor want = at::linear(ops::dequantize_fp8_rows(rows, at::kFloat), quant::dequantize_fp8(wq, at::kFloat), bias);
  CHECK(at::allclose(y, want, 1e-6, 1e-6));
  // And close to the unquantized product (two e4m3 roundings).
  CHECK(rel_l2(y, at::linear(x, w, bias)) < 0.05);
  // Per image: an image alone gives what it gives in the batch.
  const ops::Fp8Rows first{rows.data.narrow(0, 0, 1), rows.scale.narrow(0, 0, 1)};
  CHECK(at::equal(ops::fp8_linear(first, wq, bias, at::kFloat), y.narrow(0, 0, 1)));
  CHECK_FALSE(ops::fp8_gemm_supported(c10::Device(c10::kCPU)));
}

TEST_CASE("CUDA fp8 row quantization equals the CPU reference, bit for bit", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(3);
  // FLUX widths and 1000 (rows in registers, 1 and 4 chunks a thread; 1000 leaves threads idle), a row too
  // long for registers (shared memory) and an odd width (scalar path).
  for (const int64_t k : {3072, 15360, 1000, 40000, 36}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
      INFO("K = " << k << " " << c10::toString(dtype));
      at::Tensor x = (at::randn({3, 7, k}) * at::rand({3, 7, 1}) * 30).to(dtype);
      x[0][1].zero_();
      const ops::Fp8Rows cpu = ops::quantize_fp8_rows(x);
      const ops::Fp8Rows gpu = ops::quantize_fp8_rows(x.to(at::kCUDA));
      CHECK(at::equal(gpu.scale.cpu(), cpu.scale));
      CHECK(at::equal(gpu.data.cpu().view(at::kByte), cpu.data.view(at::kByte)));
    }
  }
}

TEST_CASE("joined fp8 rows: [a | GELU(b)] quantized as one row", "[ops][fp8]") {
  at::manual_seed(5);
  const at::Tensor a = (at::randn({2, 3, 8}) * 3).to(at::kBFloat16);
  const at::Tensor b = (at::randn({2, 3, 24}) * 2).to(at::kBFloat16);
  b[1][2].fill_(40.0);  // the row whose absmax comes from b's side
  const ops::Fp8Rows joined = ops::quantize_fp8_rows_joined(a, b, /*gelu_b=*/true);
  REQUIRE(joined.data.sizes() == at::IntArrayRef({2, 3, 32}));
  // One scale per joined row: GELU(40) = 40 sets row [1, 2]'s scale, so a's values there shrink with it.
  CHECK(joined.scale[1][2].item<float>() == 40.0f / 448.0f);
  const at::Tensor want = at::cat({a, at::gelu(b, "tanh")}, -1);
  CHECK(rel_l2(ops::dequantize_fp8_rows(joined, at::kFloat), want) < 0.03);
  // Without GELU, and without a: the plain quantization of b.
  const ops::Fp8Rows plain = ops::quantize_fp8_rows_joined(at::Tensor(), b, false);
  CHECK(at::equal(plain.data.view(at::kByte), ops::quantize_fp8_rows(b).data.view(at::kByte)));
  CHECK_THROWS_AS(ops::quantize_fp8_rows_joined(a.to(at::kFloat), b, true), std::invalid_argument);
  CHECK_THROWS_AS(ops::quantize_fp8_rows_joined(a.narrow(1, 0, 2), b, true), std::invalid_argument);
}

TEST_CASE("CUDA joined fp8 rows: [a | b] bit for bit, [a | GELU(b)] within one e4m3 step of at::gelu's", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(6);
  // FLUX's single blocks ([3072 | 12288]), the feed-forward's hidden states (b alone), a warp straddling a and b
  // ([24 | 1000]), and odd widths.
  for (const auto& [ka, kb] :
       std::vector<std::pair<int64_t, int64_t>>{{3072, 12288}, {0, 12288}, {24, 1000}, {5, 31}}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
      INFO("Ka = " << ka << ", Kb = " << kb << " " << c10::toString(dtype));
      const at::Tensor b = (at::randn({2, 9, kb}) * at::rand({2, 9, 1}) * 8).to(dtype).to(at::kCUDA);
      const at::Tensor a = ka > 0 ? (at::randn({2, 9, ka}) * 3).to(dtype).to(at::kCUDA) : at::Tensor();
      // Without GELU: the plain quantization of the joined rows, and the CPU reference, bit for bit.
      const ops::Fp8Rows plain = ops::quantize_fp8_rows_joined(a, b, /*gelu_b=*/false);
      const at::Tensor joined = a.defined() ? at::cat({a, b}, -1) : b;
      const ops::Fp8Rows cpu_plain = ops::quantize_fp8_rows(joined.cpu());
      CHECK(at::equal(plain.scale.cpu(), cpu_plain.scale));
      CHECK(at::equal(plain.data.cpu().view(at::kByte), cpu_plain.data.view(at::kByte)));

      // With GELU: the kernel's GELU (x / (1 + e^-2u)) is within a few fp32 ulps of ATen's (0.5 x (1 + tanh u)),
      // so after rounding to the dtype a value rarely lands one ulp apart; every fp8 value stays within one
      // e4m3 step of the composition at::gelu + at::cat + quantize, and nearly all bytes are equal.
      const ops::Fp8Rows fused = ops::quantize_fp8_rows_joined(a, b, /*gelu_b=*/true);
      const at::Tensor gelu = at::gelu(b, "tanh");
      const ops::Fp8Rows want = ops::quantize_fp8_rows(a.defined() ? at::cat({a, gelu}, -1) : gelu);
      const at::Tensor got_values = ops::dequantize_fp8_rows(fused, at::kFloat).cpu().to(at::kDouble);
      const at::Tensor want_values = ops::dequantize_fp8_rows(want, at::kFloat).cpu().to(at::kDouble);
      CHECK(at::allclose(fused.scale, want.scale, /*rtol=*/1.0 / 128, /*atol=*/0.0));  // one bf16 ulp at most
      // One e4m3 step: 2^-3 of a normal value, 2^-9 of the row's scale for the smallest ones.
      const at::Tensor step = at::maximum(want_values.abs() / 8, want.scale.cpu().to(at::kDouble).unsqueeze(-1) / 512);
      CHECK(((got_values - want_values).abs() <= step * 1.0001).all().item<bool>());
      // Under 0.1% of the bytes differ. fp32 rows keep their GELU values unrounded, so a row's scale moves by
      // a few fp32 ulps (on the H100, 2 of these 18 rows) and the bytes are compared everywhere. In bf16 / fp16
      // rows a scale moves only when the row's largest value rounds to the neighbouring bf16 / fp16: at most
      // one row here, whose bytes all move with it; the bytes are compared in the rows of equal scale.
      const at::Tensor differs = fused.data.view(at::kByte).ne(want.data.view(at::kByte));
      if (dtype == at::kFloat) {
        CHECK(at::allclose(fused.scale, want.scale, /*rtol=*/1e-6, /*atol=*/0.0));
        CHECK(differs.sum().item<double>() <= 1e-3 * double(fused.data.numel()));
      } else {
        const at::Tensor same_scale = fused.scale.eq(want.scale);
        CHECK(same_scale.logical_not().sum().item<int64_t>() <= 1);
        CHECK(differs.logical_and(same_scale.unsqueeze(-1)).sum().item<double>() <= 1e-3 * double(fused.data.numel()));
      }
      // And against the CPU reference (ATen's CPU GELU), to the same closeness.
      const ops::Fp8Rows cpu = ops::quantize_fp8_rows_joined(a.defined() ? a.cpu() : a, b.cpu(), true);
      CHECK(rel_l2(ops::dequantize_fp8_rows(fused, at::kFloat), ops::dequantize_fp8_rows(cpu, at::kFloat)) < 1e-2);
    }
  }
}

TEST_CASE("CUDA fp8 rows read column slices of a wider product in place, as their contiguous copies", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(7);
  // The single blocks' joined projection: [B, S, q | k | v | MLP], whose attention output and MLP columns feed
  // the output projection's rows; plus an odd row stride (the scalar path) and a batch whose rows do not lie at
  // one stride (a copy).
  const at::Tensor wide = (at::randn({2, 33, 1024 + 4096}) * 3).to(at::kBFloat16).to(at::kCUDA);
  const at::Tensor a = (at::randn({2, 33, 256}) * 2).to(at::kBFloat16).to(at::kCUDA);
  const at::Tensor mlp = wide.narrow(2, 1024, 4096);
  for (bool gelu : {false, true}) {
    const ops::Fp8Rows sliced = ops::quantize_fp8_rows_joined(a, mlp, gelu);
    const ops::Fp8Rows copied = ops::quantize_fp8_rows_joined(a, mlp.contiguous(), gelu);
    CHECK(at::equal(sliced.scale, copied.scale));
    CHECK(at::equal(sliced.data.view(at::kByte), copied.data.view(at::kByte)));
  }
  const at::Tensor odd = (at::randn({3, 5, 333}) * 3).to(at::kBFloat16).to(at::kCUDA).narrow(2, 7, 320);
  CHECK(at::equal(ops::quantize_fp8_rows(odd).data.view(at::kByte), ops::quantize_fp8_rows(odd.contiguous()).data.view(at::kByte)));
  const at::Tensor apart = wide.narrow(1, 0, 16).narrow(2, 0, 512);  // image rows end before the next image's
  CHECK(at::equal(ops::quantize_fp8_rows(apart).data.view(at::kByte),
                  ops::quantize_fp8_rows(apart.contiguous()).data.view(at::kByte)));
}

TEST_CASE("CUDA fp8 GEMM (row-wise scaled) against the fp32 GEMM of the dequantized operands", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  if (!ops::fp8_gemm_supported(c10::Device(c10::kCUDA, 0))) SKIP("this GPU has no fp8 tensor cores (needs 8.9+)");
  at::manual_seed(4);
  const auto opt = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor x = at::randn({2, 600, 3072}, opt);
  const at::Tensor w = at::randn({3072, 3072}, opt) / 55;
  const at::Tensor bias = at::randn({3072}, opt) * 0.1;
  const ops::Fp8Rows rows = ops::quantize_fp8_rows(x);
  const quant::Fp8Tensor wq = quant::quantize_fp8_per_channel(w);
  const at::Tensor y = ops::fp8_linear(rows, wq, bias, at::kBFloat16);
  at::Tensor reference;
  {
    const ops::KernelModeGuard mode(ops::KernelMode::kReference);
    reference = ops::fp8_linear(rows, wq, bias, at::kFloat);
  }
  CAPTURE(rel_l2(y, reference));
  CHECK(rel_l2(y, reference) < 6e-3);  // bf16 output rounding and fast accumulation
  // Into a column slice of a wider buffer, poisoned around it.
  at::Tensor buffer = at::full({2, 600, 4000}, NAN, opt);
  at::Tensor slice = buffer.narrow(2, 100, 3072);
  ops::fp8_linear_out(slice, rows, wq, bias);
  CHECK(at::equal(slice, y));
  CHECK(at::isnan(buffer.narrow(2, 0, 100)).all().item<bool>());
  // Per image.
  const ops::Fp8Rows second{rows.data.narrow(0, 1, 1), rows.scale.narrow(0, 1, 1)};
  CHECK(at::equal(ops::fp8_linear(second, wq, bias, at::kBFloat16), y.narrow(0, 1, 1)));
  // GELU folded into the call: the same as GELU on the output, also into a column slice.
  at::Tensor gelu_slice = at::full({2, 600, 4000}, NAN, opt).narrow(2, 100, 3072);
  ops::fp8_linear_out(gelu_slice, rows, wq, bias, /*gelu_tanh=*/true);
  CHECK(at::equal(gelu_slice, at::gelu(y, "tanh")));
  // One row per image (the modulation Linears): image i's scales start 4 * i bytes in, which cuBLASLt
  // does not take as they are.
  const ops::Fp8Rows single = ops::quantize_fp8_rows(at::randn({4, 1, 3072}, opt));
  const at::Tensor y1 = ops::fp8_linear(single, wq, bias, at::kBFloat16);
  for (int64_t i = 0; i < 4; ++i) {
    const ops::Fp8Rows one{single.data.narrow(0, i, 1).clone(), single.scale.narrow(0, i, 1).clone()};
    CHECK(at::equal(ops::fp8_linear(one, wq, bias, at::kBFloat16), y1.narrow(0, i, 1)));
  }
}

TEST_CASE("CUDA modulated LayerNorm writing fp8 rows against the reference (LayerNorm, then quantize)", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(5);
  constexpr double kEps = 1e-6;
  // FLUX's width, 1000 and 6144 (registers), 12288 (shared memory), and an odd one (scalar path).
  for (const int64_t c : {3072, 1000, 6144, 12288, 36}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
      INFO("C = " << c << " " << c10::toString(dtype));
      const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const at::Tensor h = (at::randn({2, 77, c}) * 3 + 0.5).to(opt);
      const at::Tensor x = h.narrow(1, 13, 64);  // a token slice of a joint sequence
      const at::Tensor shift = (at::randn({2, c}) * 0.3).to(opt), scale = (at::randn({2, c}) * 0.3).to(opt);
      // float64 truth of the modulated LayerNorm.
      const at::Tensor xd = x.cpu().to(at::kDouble);
      const at::Tensor want = at::layer_norm(xd, {c}, {}, {}, kEps) * (1 + scale.cpu().to(at::kDouble).unsqueeze(1)) +
                              shift.cpu().to(at::kDouble).unsqueeze(1);
      ops::Fp8Rows fused, reference;
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kFused);
        fused = ops::modulated_layer_norm_fp8(x, shift, scale, kEps);
      }
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kReference);
        reference = ops::modulated_layer_norm_fp8(x, shift, scale, kEps);
      }
      REQUIRE(fused.data.scalar_type() == at::kFloat8_e4m3fn);
      REQUIRE(fused.data.sizes() == x.sizes());
      REQUIRE(fused.scale.sizes() == at::IntArrayRef({2, 64}));
      const at::Tensor got = ops::dequantize_fp8_rows(fused, at::kFloat);
      const at::Tensor ref = ops::dequantize_fp8_rows(reference, at::kFloat);
      REQUIRE(at::isfinite(got).all().item<bool>());
      // One rounding (fp32 straight to e4m3) is no worse than the reference's two (to dtype, then to e4m3).
      const double err_fused = rel_l2(got, want), err_reference = rel_l2(ref, want);
      CAPTURE(err_fused, err_reference);
      CHECK(err_fused <= err_reference * 1.02 + 1e-6);
      CHECK(err_fused < kE4m3Relative / 2);
      // Each row's scale is its absmax / 448, up to the dtype rounding the reference made first.
      CHECK(rel_l2(fused.scale, reference.scale) < 1e-2);
    }
  }
}

TEST_CASE("the gated residual + LayerNorm writing fp8 rows: on the CPU the reference norm quantized", "[ops][fp8]") {
  at::manual_seed(8);
  constexpr double kEps = 1e-6;
  const at::Tensor h = (at::randn({2, 9, 64}) * 3 + 0.5).to(at::kBFloat16);
  const at::Tensor x = h.narrow(1, 2, 5);  // a token slice of a joint sequence
  const at::Tensor mod = (at::randn({2, 3 * 64}) * 0.3).to(at::kBFloat16);
  const auto e = mod.chunk(3, 1);
  const at::Tensor y0 = at::randn({2, 5, 64}).to(at::kBFloat16);
  at::Tensor y = y0.clone(), y_want = y0.clone();
  const ops::Fp8Rows got = ops::gated_residual_layer_norm_fp8_(y, x, e[0], e[1], e[2], kEps);
  const ops::Fp8Rows want = ops::quantize_fp8_rows(ops::gated_residual_layer_norm_(y_want, x, e[0], e[1], e[2], kEps));
  CHECK(at::equal(y, y_want));  // the residual stream updated the same way
  CHECK(at::equal(got.scale, want.scale));
  CHECK(at::equal(got.data.view(at::kByte), want.data.view(at::kByte)));
  at::Tensor wrong = at::randn({2, 4, 64}).to(at::kBFloat16);
  CHECK_THROWS_AS(ops::gated_residual_layer_norm_fp8_(wrong, x, e[0], e[1], e[2], kEps), std::invalid_argument);
}

TEST_CASE("CUDA gated residual + LayerNorm writing fp8 rows against float64 and the reference", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(9);
  constexpr double kEps = 1e-6;
  // FLUX's width (registers), 12288 (shared memory), an odd width (scalar path).
  for (const int64_t c : {3072, 12288, 36}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
      INFO("C = " << c << " " << c10::toString(dtype));
      const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const at::Tensor h = (at::randn({2, 77, c}) * 3 + 0.5).to(opt);
      const at::Tensor x = h.narrow(1, 13, 64);
      const at::Tensor mod = (at::randn({2, 3 * c}) * 0.3).to(opt);
      const auto e = mod.chunk(3, 1);
      const at::Tensor y0 = at::randn({2, 64, c}).to(opt);
      at::Tensor y_fused = y0.clone(), y_ref = y0.clone();
      ops::Fp8Rows fused, reference;
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kFused);
        fused = ops::gated_residual_layer_norm_fp8_(y_fused, x, e[0], e[1], e[2], kEps);
      }
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kFused);
        // The residual stream as the dense fused op leaves it: the fp8 form must update it the same way.
        at::Tensor y_dense = y0.clone();
        ops::gated_residual_layer_norm_(y_dense, x, e[0], e[1], e[2], kEps);
        CHECK(at::equal(y_fused, y_dense));
      }
      {
        const ops::KernelModeGuard mode(ops::KernelMode::kReference);
        reference = ops::gated_residual_layer_norm_fp8_(y_ref, x, e[0], e[1], e[2], kEps);
      }
      // float64 truth of the norm of the stream each path stored (as the next block sees it).
      const auto truth = [&](const at::Tensor& stream) {
        return at::layer_norm(stream.cpu().to(at::kDouble), {c}, {}, {}, kEps) *
                   (1 + e[2].cpu().to(at::kDouble).unsqueeze(1)) +
               e[1].cpu().to(at::kDouble).unsqueeze(1);
      };
      const at::Tensor got = ops::dequantize_fp8_rows(fused, at::kFloat);
      REQUIRE(at::isfinite(got).all().item<bool>());
      const double err_fused = rel_l2(got, truth(y_fused)),
                   err_reference = rel_l2(ops::dequantize_fp8_rows(reference, at::kFloat), truth(y_ref));
      CAPTURE(err_fused, err_reference);
      CHECK(err_fused <= err_reference * 1.02 + 1e-6);
      CHECK(err_fused < kE4m3Relative / 2);
    }
  }
}
