// fp8 attention (--attention fp8): the per-image e4m3 operands (ops/fp8_heads.h), q / k normalized and rotated
// into e4m3 (ops/qk_norm_rope.h), the attention itself (ops/fp8_attention.h) and the joined rows that read its
// output (ops/fp8_linear.h). On the CPU the references against their definitions; on CUDA the kernels and
// cuDNN against the references.
#include "fluxbatch/ops/fp8_attention.h"
#include "fluxbatch/ops/fp8_heads.h"
#include "fluxbatch/ops/fp8_linear.h"
#include "fluxbatch/ops/qk_norm_rope.h"
#include "fluxbatch/ops/rope.h"

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

at::Tensor dequantized(const ops::Fp8Heads& x) { return ops::dequantize_fp8_heads(x, at::kFloat).cpu(); }

// Exact attention in float64 of the dequantized operands: [B, S, H * D].
at::Tensor exact_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t head_dim) {
  auto split = [&](const at::Tensor& t) {
    return t.to(at::kCPU).to(at::kDouble).unflatten(-1, {-1, head_dim}).transpose(1, 2);
  };
  const at::Tensor p = at::softmax(at::matmul(split(q), split(k).transpose(-1, -2)) / std::sqrt(double(head_dim)), -1);
  return at::matmul(p, split(v)).transpose(1, 2).flatten(2);
}

// RoPE tables of FLUX's form for s tokens: [S, D] fp32 angles of a few frequencies.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t tokens, int64_t head_dim) {
  const at::Tensor pos = at::arange(tokens, at::kFloat).unsqueeze(1);
  const at::Tensor freq = at::pow(10000.0, -at::arange(0, head_dim / 2, at::kFloat) * 2.0 / head_dim);
  const at::Tensor angle = (pos * freq).repeat_interleave(2, 1);  // [S, D], pairs share an angle
  return {angle.cos(), angle.sin()};
}

// q, k, v of the single blocks' form: random [B, S, H * D] with uneven magnitudes across images and heads.
struct Operands {
  Operands(int64_t images, int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed) : d(head_dim) {
    at::manual_seed(seed);
    auto make = [&](double spread) {
      return at::randn({images, tokens, heads * head_dim}) * (at::rand({images, 1, heads * head_dim}) * spread + 0.5);
    };
    // Scores of a few units, as a trained model's: a sharper softmax turns e4m3's rounding of q and k into
    // larger output changes, which is the inputs' property, not the op's.
    q = make(2.0);
    k = make(2.0);
    v = make(4.0);
  }
  int64_t d;
  at::Tensor q, k, v;
};

}  // namespace

TEST_CASE("fp8 heads: one scale per image, its absmax on 448, values within e4m3 rounding", "[ops][fp8]") {
  at::manual_seed(1);
  at::Tensor x = at::randn({3, 40, 64}) * at::tensor({1.0f, 30.0f, 0.01f}).view({3, 1, 1});
  x[2].zero_();
  const ops::Fp8Heads h = ops::quantize_fp8_heads(x);
  REQUIRE(h.data.sizes() == x.sizes());
  REQUIRE(h.scale.sizes() == at::IntArrayRef{3});
  for (int64_t b = 0; b < 2; ++b) {
    const float absmax = x[b].abs().max().item<float>();
    CHECK(h.scale[b].item<float>() == absmax / 448.0f);
    CHECK(h.data[b].to(at::kFloat).abs().max().item<float>() == 448.0f);
  }
  CHECK(h.scale[2].item<float>() == 1.0f);  // an image of zeros
  CHECK(h.data[2].to(at::kFloat).abs().max().item<float>() == 0.0f);
  const at::Tensor back = ops::dequantize_fp8_heads(h, at::kFloat);
  // Normal e4m3 values move by at most 2^-4 of themselves; the smallest by at most half a subnormal step.
  const at::Tensor bound = x.abs() / 16 + h.scale.view({-1, 1, 1}) * std::ldexp(1.0, -10);
  CHECK(((back - x).abs() <= bound).all().item<bool>());
  // An image's bytes do not depend on its batch.
  const ops::Fp8Heads alone = ops::quantize_fp8_heads(x.narrow(0, 1, 1));
  CHECK(at::equal(alone.data.view(at::kByte), h.data.narrow(0, 1, 1).view(at::kByte)));
}

TEST_CASE("q/k RMSNorm + RoPE into fp8: the bound's scale, the fp32 reference rounded once", "[ops][fp8]") {
  const int64_t d = 16, tokens = 12, text = 5;
  at::manual_seed(2);
  const at::Tensor x = at::randn({2, tokens, 3 * d}) * 4;
  const at::Tensor w_text = at::rand({d}) * 2, w_image = at::rand({d}) * 3 + 0.5;
  const auto [cos, sin] = rope_tables(tokens, d);
  const ops::Fp8Heads h = ops::rms_norm_rope_fp8(x, d, w_text, w_image, text, cos, sin, 1e-6);
  const float wmax = std::max(w_text.abs().max().item<float>(), w_image.abs().max().item<float>());
  const float scale = wmax * std::sqrt(float(d)) / 448.0f;
  CHECK(h.scale[0].item<float>() == scale);
  CHECK(h.scale[1].item<float>() == scale);
  at::Tensor want = x.clone();
  ops::rms_norm_rope_(want, d, w_text, w_image, text, cos, sin, 1e-6);  // fp32 input: the fp32 reference
  const at::Tensor back = dequantized(h);
  CHECK(((back - want).abs() <= want.abs() / 16 + scale * std::ldexp(1.0, -10)).all().item<bool>());
  CHECK(rel_l2(back, want) < 0.04);
  // The bound holds: no value was clamped.
  CHECK(h.data.to(at::kFloat).abs().max().item<float>() < 448.0f);
  // x is left as it was (a copy is written).
  const at::Tensor before = x.clone();
  (void)ops::rms_norm_rope_fp8(x, d, w_text, w_image, text, cos, sin, 1e-6);
  CHECK(at::equal(x, before));
}

TEST_CASE("fp8 attention reference: close to exact attention of its operands, output scale from v's", "[ops][fp8]") {
  const Operands in(2, 50, 2, 32, 3);
  const ops::Fp8Heads q = ops::quantize_fp8_heads(in.q), k = ops::quantize_fp8_heads(in.k),
                      v = ops::quantize_fp8_heads(in.v);
  const ops::Fp8Heads out = ops::fp8_attention(q, k, v, in.d);
  REQUIRE(out.data.sizes() == in.q.sizes());
  CHECK(at::equal(out.scale, v.scale * 1.125f));
  const at::Tensor exact = exact_attention(dequantized(q), dequantized(k), dequantized(v), in.d);
  const double err = rel_l2(dequantized(out), exact);
  CAPTURE(err);
  CHECK(err > 1e-4);   // the probabilities and the output really were rounded
  CHECK(err < 0.04);   // e4m3 probabilities and output: a few percent
  // The operands' own rounding (one scale over an image whose channels differ ninefold in size): larger, and
  // not the op's doing; bounded so that a broken quantization shows.
  CHECK(rel_l2(exact, exact_attention(in.q, in.k, in.v, in.d)) < 0.1);
  // An image does not depend on its batch.
  auto image = [](const ops::Fp8Heads& t, int64_t b) {
    return ops::Fp8Heads{t.data.narrow(0, b, 1), t.scale.narrow(0, b, 1)};
  };
  const ops::Fp8Heads alone = ops::fp8_attention(image(q, 1), image(k, 1), image(v, 1), in.d);
  CHECK(at::equal(alone.data.view(at::kByte), out.data.narrow(0, 1, 1).view(at::kByte)));
}

TEST_CASE("joined fp8 rows from fp8 attention's output equal those of its dequantized values", "[ops][fp8]") {
  at::manual_seed(4);
  const ops::Fp8Heads a = ops::quantize_fp8_heads(at::randn({2, 9, 48}) * 5);
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    const at::Tensor b = (at::randn({2, 9, 80}) * 3).to(dtype);
    const ops::Fp8Rows got = ops::quantize_fp8_rows_joined(a, b, true);
    const ops::Fp8Rows want = ops::quantize_fp8_rows_joined(ops::dequantize_fp8_heads(a, dtype), b, true);
    CHECK(at::equal(got.scale, want.scale));
    CHECK(at::equal(got.data.view(at::kByte), want.data.view(at::kByte)));
  }
}

TEST_CASE("CUDA fp8 heads and joined rows from them equal the CPU reference, bit for bit", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(5);
  for (at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    INFO(c10::toString(dtype));
    // A column slice of a wider product (rows 3 * C apart), as the single blocks' v; and an odd width.
    const at::Tensor wide = (at::randn({3, 301, 3 * 384}) * at::rand({3, 1, 1}) * 20).to(dtype);
    const at::Tensor wide_gpu = wide.cuda();
    for (const auto& [start, width] : std::vector<std::pair<int64_t, int64_t>>{{2 * 384, 384}, {5, 37}}) {
      const ops::Fp8Heads cpu = ops::quantize_fp8_heads(wide.narrow(2, start, width));
      const ops::Fp8Heads gpu = ops::quantize_fp8_heads(wide_gpu.narrow(2, start, width));
      CHECK(at::equal(gpu.scale.cpu(), cpu.scale));
      CHECK(at::equal(gpu.data.cpu().view(at::kByte), cpu.data.view(at::kByte)));
    }
    // Joined rows [fp8 a | GELU(b)] at the single blocks' widths (3072 + 12288 in miniature: 384 + 1536).
    const ops::Fp8Heads a = ops::quantize_fp8_heads((at::randn({2, 33, 384}) * 4).to(dtype));
    const at::Tensor b = (at::randn({2, 33, 1536}) * 2).to(dtype);
    const ops::Fp8Rows cpu = ops::quantize_fp8_rows_joined(a, b, false);
    const ops::Fp8Rows gpu = ops::quantize_fp8_rows_joined(ops::Fp8Heads{a.data.cuda(), a.scale.cuda()}, b.cuda(), false);
    CHECK(at::equal(gpu.scale.cpu(), cpu.scale));
    CHECK(at::equal(gpu.data.cpu().view(at::kByte), cpu.data.view(at::kByte)));
  }
}

TEST_CASE("CUDA q/k RMSNorm + RoPE into fp8: the same scale, bytes within one e4m3 step", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  const int64_t d = 128, tokens = 70, text = 20;
  at::manual_seed(6);
  const auto [cos, sin] = rope_tables(tokens, d);
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    INFO(c10::toString(dtype));
    const at::Tensor x = (at::randn({2, tokens, 4 * d}) * 3).to(dtype);
    const at::Tensor w_text = (at::rand({d}) * 2).to(dtype), w_image = (at::rand({d}) * 3).to(dtype);
    // The CPU reference computes in fp32 from the same rounded inputs.
    const ops::Fp8Heads cpu = ops::rms_norm_rope_fp8(x.to(at::kFloat), d, w_text.to(at::kFloat),
                                                     w_image.to(at::kFloat), text, cos, sin, 1e-6);
    const ops::Fp8Heads gpu = ops::rms_norm_rope_fp8(x.cuda(), d, w_text.cuda(), w_image.cuda(), text, cos.cuda(),
                                                     sin.cuda(), 1e-6);
    CHECK(at::equal(gpu.scale.cpu(), cpu.scale));
    const at::Tensor got = gpu.data.cpu().to(at::kFloat), want = cpu.data.to(at::kFloat);
    const double differing = (got != want).to(at::kDouble).mean().item<double>();
    CAPTURE(differing);
    CHECK(differing < 0.01);  // rsqrtf and fused multiplies: a value near a rounding boundary may go the other way
    CHECK(((got - want).abs() <= want.abs() / 8 + std::ldexp(1.0, -9)).all().item<bool>());
  }
}

TEST_CASE("CUDA fp8 attention (cuDNN) against the reference and exact attention", "[ops][fp8][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  if (!ops::fp8_attention_supported(c10::Device(c10::kCUDA, 0))) {
    // Said, not skipped silently: a Hopper build without the frontend is a build problem.
    FAIL_CHECK("fp8 attention is not supported on this device/build (needs compute capability 9.0 and cuDNN's frontend)");
    return;
  }
  // FLUX's head size; token counts that are not multiples of 64; q/k/v as column slices of one product.
  for (const int64_t tokens : {300, 1029}) {
    INFO("tokens " << tokens);
    const Operands in(2, tokens, 3, 128, 7);
    const at::Tensor product = at::cat({in.q, in.k, in.v}, 2).to(at::kBFloat16).cuda();  // [B, S, 3 * C]
    const int64_t c = in.q.size(2);
    const ops::Fp8Heads q = ops::quantize_fp8_heads(product.narrow(2, 0, c));
    const ops::Fp8Heads k = ops::quantize_fp8_heads(product.narrow(2, c, c));
    const ops::Fp8Heads v = ops::quantize_fp8_heads(product.narrow(2, 2 * c, c));
    const ops::Fp8Heads gpu = ops::fp8_attention(q, k, v, 128);
    REQUIRE(gpu.data.is_cuda());
    auto cpu_of = [](const ops::Fp8Heads& t) { return ops::Fp8Heads{t.data.cpu(), t.scale.cpu()}; };
    const ops::Fp8Heads cpu = ops::fp8_attention(cpu_of(q), cpu_of(k), cpu_of(v), 128);
    CHECK(at::equal(gpu.scale.cpu(), cpu.scale));
    const at::Tensor exact = exact_attention(dequantized(q), dequantized(k), dequantized(v), 128);
    const double err_ref = rel_l2(dequantized(gpu), dequantized(cpu)), err_exact = rel_l2(dequantized(gpu), exact),
                 err_cpu = rel_l2(dequantized(cpu), exact);
    CAPTURE(err_ref, err_exact, err_cpu);
    CHECK(err_ref < 0.03);
    CHECK(err_exact < 0.05);
    // Same inputs, same bytes; and an image does not depend on its batch.
    const ops::Fp8Heads again = ops::fp8_attention(q, k, v, 128);
    CHECK(at::equal(again.data.cpu().view(at::kByte), gpu.data.cpu().view(at::kByte)));
    auto image = [](const ops::Fp8Heads& t, int64_t b) {
      return ops::Fp8Heads{t.data.narrow(0, b, 1), t.scale.narrow(0, b, 1)};
    };
    const ops::Fp8Heads alone = ops::fp8_attention(image(q, 1), image(k, 1), image(v, 1), 128);
    CHECK(at::equal(alone.data.cpu().view(at::kByte), gpu.data.narrow(0, 1, 1).cpu().view(at::kByte)));
  }
}
