// The fused FLUX ops: on the CPU (and in the reference kernel mode) each is exactly the reference's ATen
// composition; on CUDA each kernel is checked against a float64 reference of the same inputs, and must be
// at least as accurate as the reference composition run in the same dtype on the same device.
#include "fluxbatch/ops/gated_residual.h"
#include "fluxbatch/ops/kernel_mode.h"
#include "fluxbatch/ops/linear_gelu.h"
#include "fluxbatch/ops/modulated_layer_norm.h"
#include "fluxbatch/ops/qk_norm_rope.h"
#include "fluxbatch/ops/rope.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>

#include <cmath>
#include <vector>

using namespace fluxbatch;

namespace {

constexpr double kEps = 1e-6;

// ||a - b|| / ||b|| in float64.
double rel_l2(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU).to(at::kDouble);
  const at::Tensor y = b.to(at::kCPU).to(at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

// The references, written out in float64 from the definitions (not from the ops under test).
at::Tensor modln_f64(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  const at::Tensor v = x.to(at::kCPU).to(at::kDouble);
  const at::Tensor mean = v.mean(-1, true);
  const at::Tensor var = (v - mean).pow(2).mean(-1, true);
  const at::Tensor n = (v - mean) / (var + kEps).sqrt();
  return n * (1 + scale.to(at::kCPU).to(at::kDouble).unsqueeze(1)) + shift.to(at::kCPU).to(at::kDouble).unsqueeze(1);
}

at::Tensor norm_rope_f64(const at::Tensor& x, int64_t d, const at::Tensor& w_text, const at::Tensor& w_image,
                         int64_t text_len, const at::Tensor& cos, const at::Tensor& sin) {
  at::Tensor v = x.to(at::kCPU).to(at::kDouble).unflatten(-1, {-1, d});  // [B, S, H, D]
  v = v / (v.pow(2).mean(-1, true) + kEps).sqrt();
  const int64_t s = v.size(1);
  const at::Tensor w = at::cat({w_text.to(at::kCPU).to(at::kDouble).expand({text_len, d}),
                                w_image.to(at::kCPU).to(at::kDouble).expand({s - text_len, d})},
                               0);  // [S, D]
  v = v * w.unsqueeze(1);
  const at::Tensor re = v.slice(-1, 0, d, 2), im = v.slice(-1, 1, d, 2);
  const at::Tensor c = cos.to(at::kCPU).to(at::kDouble).unsqueeze(1), sn = sin.to(at::kCPU).to(at::kDouble).unsqueeze(1);
  at::Tensor out = at::empty_like(v);
  out.slice(-1, 0, d, 2).copy_(re * c.slice(-1, 0, d, 2) - im * sn.slice(-1, 0, d, 2));
  out.slice(-1, 1, d, 2).copy_(im * c.slice(-1, 1, d, 2) + re * sn.slice(-1, 1, d, 2));
  return out.flatten(2);
}

at::Tensor gelu_tanh_f64(const at::Tensor& v) {
  return 0.5 * v * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v.pow(3))));
}

// RoPE tables as nn::rope_1d makes them: [S, D] fp32, each angle twice.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t s, int64_t d) {
  const at::Tensor pos = at::arange(s, at::kDouble).unsqueeze(1);
  const at::Tensor freqs = at::pow(10000.0, -at::arange(0, d, 2, at::kDouble) / d);
  const at::Tensor angles = (pos * freqs).repeat_interleave(2, 1);
  return {angles.cos().to(at::kFloat), angles.sin().to(at::kFloat)};
}

}  // namespace

TEST_CASE("fused ops on the CPU are the reference composition, bit for bit", "[ops][fused]") {
  at::manual_seed(11);
  const at::Tensor h = at::randn({2, 9, 48});      // [B, L+S, C]
  const at::Tensor x = h.narrow(1, 3, 6);          // a token slice: strided over B
  const at::Tensor mod = at::randn({2, 6 * 48});   // chunks of one modulation output
  const auto e = mod.chunk(6, 1);

  SECTION("modulated_layer_norm") {
    const at::Tensor ref = at::layer_norm(x, {48}, {}, {}, kEps) * (1 + e[1].unsqueeze(1)) + e[0].unsqueeze(1);
    CHECK(at::equal(ops::modulated_layer_norm(x, e[0], e[1], kEps), ref));
  }
  SECTION("gated_residual_layer_norm_ updates the stream and normalises the update") {
    at::Tensor y = at::randn({2, 6, 48});
    const at::Tensor stream = x + e[2].unsqueeze(1) * y;
    const at::Tensor ref = at::layer_norm(stream, {48}, {}, {}, kEps) * (1 + e[4].unsqueeze(1)) + e[3].unsqueeze(1);
    const at::Tensor n = ops::gated_residual_layer_norm_(y, x, e[2], e[3], e[4], kEps);
    CHECK(at::equal(y, stream));
    CHECK(at::equal(n, ref));
  }
  SECTION("gated_residual_") {
    at::Tensor y = at::randn({2, 6, 48});
    const at::Tensor ref = x + e[5].unsqueeze(1) * y;
    ops::gated_residual_(y, x, e[5]);
    CHECK(at::equal(y, ref));
  }
  SECTION("rms_norm_rope_ normalises each stream with its weight, then rotates") {
    const int64_t d = 16, text_len = 3;
    const auto [cos, sin] = rope_tables(9, d);
    const at::Tensor w_text = at::randn({d}), w_image = at::randn({d});
    at::Tensor q = at::randn({2, 9, 48});
    const at::Tensor heads = q.unflatten(-1, {-1, d});
    const at::Tensor normed = at::cat({at::rms_norm(heads.narrow(1, 0, text_len), {d}, w_text, kEps),
                                       at::rms_norm(heads.narrow(1, text_len, 9 - text_len), {d}, w_image, kEps)},
                                      1);
    const at::Tensor ref = ops::apply_rope(normed, cos, sin).flatten(2);
    ops::rms_norm_rope_(q, d, w_text, w_image, text_len, cos, sin, kEps);
    CHECK(at::equal(q, ref));
    // And the composition against the definitions, in float64.
    at::Tensor fresh = at::randn({2, 9, 48});
    const at::Tensor want = norm_rope_f64(fresh, d, w_text, w_image, text_len, cos, sin);
    ops::rms_norm_rope_(fresh, d, w_text, w_image, text_len, cos, sin, kEps);
    CHECK(rel_l2(fresh, want) < 1e-6);
  }
  SECTION("linear_gelu_tanh_out writes GELU(x W^T + b) into a column slice, nothing else") {
    const at::Tensor in = at::randn({7, 32}), w = at::randn({40, 32}), b = at::randn({40});
    at::Tensor buffer = at::full({7, 56}, NAN);
    at::Tensor slice = buffer.narrow(1, 16, 40);
    ops::linear_gelu_tanh_out(slice, in, w, b);
    CHECK(at::equal(slice, at::gelu(at::linear(in, w, b), "tanh")));
    CHECK(at::isnan(buffer.narrow(1, 0, 16)).all().item<bool>());
    CHECK(rel_l2(slice, gelu_tanh_f64(at::linear(in.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble)))) < 1e-6);
  }
}

TEST_CASE("fused ops check their arguments", "[ops][fused]") {
  const at::Tensor x = at::randn({2, 4, 8});
  const at::Tensor v = at::randn({2, 8});
  CHECK_THROWS_AS(ops::modulated_layer_norm(x, at::randn({3, 8}), v, kEps), std::invalid_argument);
  CHECK_THROWS_AS(ops::modulated_layer_norm(x.transpose(1, 2), v, v, kEps), std::invalid_argument);
  CHECK_THROWS_AS(ops::modulated_layer_norm(x, v.to(at::kDouble), v, kEps), std::invalid_argument);
  at::Tensor y = at::randn({2, 4, 8});
  CHECK_THROWS_AS(ops::gated_residual_(y, at::randn({2, 5, 8}), v), std::invalid_argument);
  const auto [cos, sin] = rope_tables(4, 8);
  CHECK_THROWS_AS(ops::rms_norm_rope_(y, 3, at::Tensor(), at::Tensor(), 0, cos, sin, kEps), std::invalid_argument);
  CHECK_THROWS_AS(ops::rms_norm_rope_(y, 8, at::Tensor(), at::Tensor(), 5, cos, sin, kEps), std::invalid_argument);
  at::Tensor out = at::empty({4, 6});
  CHECK_THROWS_AS(ops::linear_gelu_tanh_out(out, at::randn({4, 8}), at::randn({5, 8}), at::Tensor()),
                  std::invalid_argument);
}

TEST_CASE("kernel mode: process-wide, restored by its guard", "[ops][fused]") {
  REQUIRE(ops::kernel_mode() == ops::KernelMode::kFused);  // the default
  {
    const ops::KernelModeGuard guard(ops::KernelMode::kReference);
    CHECK(ops::kernel_mode() == ops::KernelMode::kReference);
    CHECK(std::string(ops::kernel_mode_name(ops::kernel_mode())) == "reference");
  }
  CHECK(ops::kernel_mode() == ops::KernelMode::kFused);
}

// ---- CUDA: each kernel against float64, and against the reference composition on the same device ----

namespace {

struct Accuracy {
  double fused, reference;
};

// Runs `op` (which reads its inputs and returns the result) in both kernel modes on the device.
template <typename Op>
Accuracy accuracy(const Op& op, const at::Tensor& want) {
  at::Tensor fused, reference;
  {
    const ops::KernelModeGuard guard(ops::KernelMode::kFused);
    fused = op();
  }
  {
    const ops::KernelModeGuard guard(ops::KernelMode::kReference);
    reference = op();
  }
  REQUIRE(at::isfinite(fused).all().item<bool>());
  return {rel_l2(fused, want), rel_l2(reference, want)};
}

// bf16 / fp16: the fused kernel (one rounding) must not be less accurate than the reference (several);
// fp32: both are near float32 epsilon.
void check_accuracy(const Accuracy& a, at::ScalarType dtype) {
  CAPTURE(a.fused, a.reference, c10::toString(dtype));
  if (dtype == at::kFloat) {
    CHECK(a.fused < 2e-6);
  } else {
    CHECK(a.fused <= a.reference * 1.02 + 1e-7);
    CHECK(a.fused < (dtype == at::kHalf ? 1e-3 : 6e-3));
  }
}

const at::ScalarType kDtypes[] = {at::kBFloat16, at::kHalf, at::kFloat};

}  // namespace

TEST_CASE("CUDA modulated_layer_norm and gated_residual kernels against float64", "[ops][fused][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(3);
  // FLUX's width, 1000 (idle threads) and 6144 (two chunks a thread) in registers, 12288 in shared memory
  // (vector path), an odd width (scalar path), and a token slice of a joint sequence.
  for (const int64_t c : {3072, 1000, 6144, 12288, 36}) {
    for (at::ScalarType dtype : kDtypes) {
      const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const at::Tensor h = (at::randn({2, 77, c}) * 3 + 0.5).to(opt);
      const at::Tensor x = h.narrow(1, 13, 64);
      const at::Tensor mod = (at::randn({2, 6 * c}) * 0.3).to(opt);
      const auto e = mod.chunk(6, 1);
      INFO("C = " << c);
      check_accuracy(accuracy([&] { return ops::modulated_layer_norm(x, e[0], e[1], kEps); }, modln_f64(x, e[0], e[1])),
                     dtype);

      const at::Tensor y0 = at::randn({2, 64, c}).to(opt);
      const at::Tensor stream_f64 = x.to(at::kCPU).to(at::kDouble) +
                                    e[2].to(at::kCPU).to(at::kDouble).unsqueeze(1) * y0.to(at::kCPU).to(at::kDouble);
      at::Tensor y_fused = y0.clone();
      Accuracy a{};
      {
        const ops::KernelModeGuard guard(ops::KernelMode::kFused);
        // The norm's reference is taken from the rounded stream the kernel stored, as the next block sees it.
        const at::Tensor n = ops::gated_residual_layer_norm_(y_fused, x, e[2], e[3], e[4], kEps);
        a.fused = rel_l2(n, modln_f64(y_fused, e[3], e[4]));
      }
      {
        const ops::KernelModeGuard guard(ops::KernelMode::kReference);
        at::Tensor y_ref = y0.clone();
        const at::Tensor n = ops::gated_residual_layer_norm_(y_ref, x, e[2], e[3], e[4], kEps);
        a.reference = rel_l2(n, modln_f64(y_ref, e[3], e[4]));
        CHECK(rel_l2(y_fused, stream_f64) <= rel_l2(y_ref, stream_f64) * 1.02 + 1e-7);
      }
      check_accuracy(a, dtype);

      check_accuracy(accuracy(
                         [&] {
                           at::Tensor y = y0.clone();
                           ops::gated_residual_(y, x, e[5]);
                           return y;
                         },
                         x.to(at::kCPU).to(at::kDouble) +
                             e[5].to(at::kCPU).to(at::kDouble).unsqueeze(1) * y0.to(at::kCPU).to(at::kDouble)),
                     dtype);
    }
  }
}

TEST_CASE("CUDA rms_norm_rope_ kernel against float64", "[ops][fused][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(4);
  for (const int64_t d : {128, 16, 24}) {  // FLUX's head, the tiny models' head, one the kernel does not take
    for (at::ScalarType dtype : kDtypes) {
      const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const int64_t s = 300, text_len = 44, heads = 3;
      auto [cos, sin] = rope_tables(s, d);
      cos = cos.to(at::kCUDA);
      sin = sin.to(at::kCUDA);
      const at::Tensor w_text = (at::randn({d}) * 0.2 + 1).to(opt), w_image = (at::randn({d}) * 0.2 + 1).to(opt);
      const at::Tensor q0 = (at::randn({2, s, heads * d}) * 2).to(opt);
      INFO("head_dim " << d);
      check_accuracy(accuracy(
                         [&] {
                           at::Tensor q = q0.clone();
                           ops::rms_norm_rope_(q, d, w_text, w_image, text_len, cos, sin, kEps);
                           return q;
                         },
                         norm_rope_f64(q0, d, w_text, w_image, text_len, cos, sin)),
                     dtype);
    }
  }
}

TEST_CASE("CUDA linear_gelu_tanh_out (cuBLASLt epilogue) against float64, into a column slice", "[ops][fused][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  at::manual_seed(5);
  struct Shape {
    int64_t m, n, k, ld;
  };
  // The single block's MLP into its [attention | MLP] buffer, a feed-forward, and an odd small one.
  for (const Shape sh : {Shape{512, 12288, 3072, 15360}, Shape{4096, 3072, 3072, 3072}, Shape{37, 40, 24, 56}}) {
    for (at::ScalarType dtype : kDtypes) {
      const auto opt = at::TensorOptions().dtype(dtype).device(at::kCUDA);
      const at::Tensor x = at::randn({sh.m, sh.k}).to(opt);
      const at::Tensor w = (at::randn({sh.n, sh.k}) / std::sqrt(double(sh.k))).to(opt);
      const at::Tensor b = (at::randn({sh.n}) * 0.1).to(opt);
      const at::Tensor want = gelu_tanh_f64(at::linear(x.to(at::kCPU).to(at::kDouble), w.to(at::kCPU).to(at::kDouble),
                                                       b.to(at::kCPU).to(at::kDouble)));
      INFO(sh.m << "x" << sh.n << "x" << sh.k << " ld " << sh.ld);
      at::Tensor buffer = at::full({sh.m, sh.ld}, NAN, opt);
      const Accuracy a = accuracy(
          [&] {
            buffer.fill_(NAN);
            at::Tensor out = buffer.narrow(1, sh.ld - sh.n, sh.n);
            ops::linear_gelu_tanh_out(out, x, w, b);
            return out.clone();
          },
          want);
      // Poisoned columns outside the slice stay untouched.
      if (sh.ld > sh.n) CHECK(at::isnan(buffer.narrow(1, 0, sh.ld - sh.n)).all().item<bool>());
      CAPTURE(a.fused, a.reference);
      if (dtype == at::kFloat) {
        // cuBLASLt's GELU epilogue evaluates tanh with an approximation good to a few fp32 ulps.
        CHECK(a.fused < 1e-5);
      } else {
        // The output rounding dominates (both accumulate in fp32); the epilogue must not add error.
        CHECK(a.fused <= a.reference * 1.05 + 1e-7);
        CHECK(a.fused < (dtype == at::kHalf ? 2e-3 : 1e-2));
      }
    }
  }
}
