// ops::nf4_dequantize and ops::nf4_linear: the CPU path against bitsandbytes' values, each CUDA
// kernel against the CPU reference (bit-exact for dequantize, a tolerance for the linear).
#include "../quant/bnb_fixtures.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/ops/nf4_dequantize.h"
#include "fluxbatch/ops/nf4_linear.h"
#include "fluxbatch/ops/per_image_linear.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <chrono>
#include <cstdio>

using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch;

namespace {

bool have_cuda() { return at::hasCUDA(); }

test::BnbFixtures cpu_fixtures() {
  auto f = test::load_bnb_fixtures("cpu");
  if (!f) FAIL(test::bnb_fixture_path("cpu") + " is missing: run scripts/make_nf4_fixtures.py --device cpu");
  return *f;
}

void check_bits(const std::string& what, const at::Tensor& ours, const at::Tensor& ref) {
  INFO(what << ": " << test::bits_diff(ours, ref));
  CHECK(test::bits_equal(ours, ref));
}

// Max |a - b| relative to max |b|, in float32.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU).to(at::kFloat);
  const at::Tensor y = b.to(at::kCPU).to(at::kFloat);
  return (x - y).abs().max().item<double>() / std::max(1e-30, y.abs().max().item<double>());
}

const char* kVariants[] = {"plain", "nested"};
const at::ScalarType kDtypes[] = {at::kBFloat16, at::kHalf, at::kFloat};

}  // namespace

TEST_CASE("nf4_dequantize on the CPU gives bnb's values", "[nf4][ops]") {
  const auto f = cpu_fixtures();
  for (const auto& name : f.nf4_cases) {
    for (const char* variant : kVariants) {
      const std::string prefix = name + "." + variant + ".";
      const quant::Nf4Tensor w = f.nf4(name, variant, at::kBFloat16);
      const at::Tensor out = ops::nf4_dequantize(w);
      CHECK(out.scalar_type() == at::kBFloat16);
      check_bits(prefix + "deq_bf16", out, f.at(prefix + "deq_bf16"));
      if (f.has(prefix + "deq_f32")) check_bits(prefix + "deq_f32", ops::nf4_dequantize(w, at::kFloat), f.at(prefix + "deq_f32"));
    }
  }
}

TEST_CASE("nf4_dequantize out overload writes into a caller's buffer", "[nf4][ops]") {
  const quant::Nf4Tensor w = quant::quantize_nf4(at::randn({8, 128}), true);
  at::Tensor scratch = at::full({2048}, 7.0f, at::kBFloat16);
  at::Tensor view = scratch.narrow(0, 0, 1024);
  ops::nf4_dequantize(w, view);
  check_bits("into scratch", view.view({8, 128}), quant::dequantize_nf4(w, at::kBFloat16));
  CHECK((scratch.narrow(0, 1024, 1024) == 7.0f).all().item<bool>());

  at::Tensor wrong = at::empty({1000}, at::kBFloat16);
  CHECK_THROWS_WITH(ops::nf4_dequantize(w, wrong), ContainsSubstring("contiguous with 1024 values"));
  at::Tensor ints = at::empty({1024}, at::kInt);
  CHECK_THROWS_WITH(ops::nf4_dequantize(w, ints), ContainsSubstring("float32, float16 or bfloat16"));
}

TEST_CASE("nf4_linear on the CPU is dequantize + linear", "[nf4][ops]") {
  const at::Tensor weight = at::randn({96, 128}).mul_(0.05);
  const quant::Nf4Tensor w = quant::quantize_nf4(weight.to(at::kBFloat16), true);
  const at::Tensor dense = quant::dequantize_nf4(w, at::kBFloat16);
  const at::Tensor bias = at::randn({96});  // float32: cast to x's dtype, like bnb
  at::Tensor scratch;

  SECTION("many rows: the weight goes through the scratch buffer, reused across calls") {
    const at::Tensor x = at::randn({2, 5, 128}).to(at::kBFloat16);
    const at::Tensor y = ops::nf4_linear(x, w, bias, &scratch);
    check_bits("rows", y, at::linear(x, dense, bias.to(at::kBFloat16)));
    REQUIRE(scratch.numel() == 96 * 128);
    const void* buffer = scratch.data_ptr();
    ops::nf4_linear(x, w, bias, &scratch);
    CHECK(scratch.data_ptr() == buffer);
    // A smaller layer reuses the buffer; a larger one grows it.
    const quant::Nf4Tensor small = quant::quantize_nf4(at::randn({32, 64}).to(at::kBFloat16), false);
    ops::nf4_linear(at::randn({3, 64}).to(at::kBFloat16), small, at::Tensor(), &scratch);
    CHECK(scratch.data_ptr() == buffer);
    const quant::Nf4Tensor big = quant::quantize_nf4(at::randn({256, 128}).to(at::kBFloat16), false);
    ops::nf4_linear(at::randn({3, 128}).to(at::kBFloat16), big, at::Tensor(), &scratch);
    CHECK(scratch.numel() == 256 * 128);
  }
  SECTION("one row, no scratch") {
    const at::Tensor x = at::randn({1, 1, 128}).to(at::kBFloat16);
    const at::Tensor y = ops::nf4_linear(x, w, at::Tensor(), nullptr);
    CHECK(y.sizes() == at::IntArrayRef{1, 1, 96});
    check_bits("row", y, at::linear(x, dense));
  }
  SECTION("float32 input: weights rounded to bf16 first, then widened") {
    const at::Tensor x = at::randn({4, 128});
    const at::Tensor y = ops::nf4_linear(x, w, bias, &scratch);
    CHECK(y.scalar_type() == at::kFloat);
    // Each row is an image with a GEMM of its own (ops::per_image_linear).
    check_bits("f32", y, ops::per_image_linear(x, dense.to(at::kFloat), bias));
  }
  SECTION("shape errors name the sizes") {
    CHECK_THROWS_WITH(ops::nf4_linear(at::randn({2, 64}), w, bias, &scratch),
                      ContainsSubstring("x has 64 features, weights expect 128"));
    CHECK_THROWS_WITH(ops::nf4_linear(at::randn({2, 128}), w, at::randn({5}), &scratch),
                      ContainsSubstring("bias must have 96 values"));
  }
}

TEST_CASE("CUDA nf4_dequantize is bit-identical to the CPU reference", "[nf4][ops][cuda]") {
  if (!have_cuda()) SKIP("no CUDA device");
  const auto f = cpu_fixtures();
  const c10::Device gpu(at::kCUDA);
  for (const auto& name : f.nf4_cases) {
    for (const char* variant : kVariants) {
      const quant::Nf4Tensor w = f.nf4(name, variant, at::kBFloat16);
      const quant::Nf4Tensor w_gpu = w.to(gpu);
      for (at::ScalarType dtype : kDtypes) {
        const std::string what = name + "." + variant + " " + c10::toString(dtype);
        check_bits(what, ops::nf4_dequantize(w_gpu, dtype).cpu(), quant::dequantize_nf4(w, dtype));
      }
    }
  }
  SECTION("unaligned buffers and odd counts take the scalar kernel") {
    const quant::Nf4Tensor w = quant::quantize_nf4(at::randn({3, 37}), true);  // 111 values
    const quant::Nf4Tensor w_gpu = w.to(gpu);
    check_bits("odd", ops::nf4_dequantize(w_gpu, at::kBFloat16).cpu(), quant::dequantize_nf4(w, at::kBFloat16));
    const quant::Nf4Tensor big = quant::quantize_nf4(at::randn({64, 256}), false);
    at::Tensor buffer = at::empty({64 * 256 + 1}, at::TensorOptions().dtype(at::kBFloat16).device(gpu));
    at::Tensor shifted = buffer.narrow(0, 1, 64 * 256);  // 2 bytes off a 16-byte boundary
    ops::nf4_dequantize(big.to(gpu), shifted);
    check_bits("unaligned out", shifted.cpu().view({64, 256}), quant::dequantize_nf4(big, at::kBFloat16));
  }
  SECTION("FLUX-sized nested weights") {
    const at::Tensor weight = at::randn({3072, 3072}, at::TensorOptions().dtype(at::kBFloat16).device(gpu)) * 0.02;
    const quant::Nf4Tensor w = quant::quantize_nf4(weight, true);
    check_bits("3072x3072", ops::nf4_dequantize(w).cpu(), quant::dequantize_nf4(w.to(at::kCPU), at::kBFloat16));
  }
}

TEST_CASE("CUDA nf4_linear matches dequantize + linear on the CPU", "[nf4][ops][cuda]") {
  if (!have_cuda()) SKIP("no CUDA device");
  const c10::Device gpu(at::kCUDA);
  struct Shape {
    int64_t n, k;
  };
  // FLUX-like: modulation [6*C, C] at C = 512, embedders with K = 256 / 64, a K that is only a multiple
  // of 32 (blocks straddle rows), and K = 40 (no fused kernel: falls back to dequantize + GEMM).
  for (const Shape s : {Shape{3072, 512}, Shape{512, 256}, Shape{96, 64}, Shape{50, 96}, Shape{24, 40}}) {
    for (at::ScalarType dtype : kDtypes) {
      for (bool nested : {false, true}) {
        const at::Tensor weight = at::randn({s.n, s.k}).mul_(0.05).to(dtype);
        const quant::Nf4Tensor w = quant::quantize_nf4(weight, nested);
        const at::Tensor dense = quant::dequantize_nf4(w, at::kFloat);
        const at::Tensor bias = at::randn({s.n}).to(dtype);
        const quant::Nf4Tensor w_gpu = w.to(gpu);
        at::Tensor scratch;
        for (int64_t rows : {1, 7}) {
          const at::Tensor x = at::randn({rows, s.k}).to(dtype);
          const at::Tensor ref = at::linear(x.to(at::kFloat), dense, bias.to(at::kFloat));
          const at::Tensor y = ops::nf4_linear(x.to(gpu), w_gpu, bias.to(gpu), &scratch);
          INFO(s.n << "x" << s.k << " " << c10::toString(dtype) << (nested ? " nested" : "") << " rows " << rows);
          CHECK(y.scalar_type() == dtype);
          CHECK(y.sizes() == ref.sizes());
          const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 2e-3 : 1.6e-2;
          CHECK(relative_error(y, ref) < tol);
          if (rows == 1) CHECK(!scratch.defined() == (s.k % 32 == 0));  // the fused kernel needs no scratch
        }
      }
    }
  }
}

TEST_CASE("bench: NF4 dequantize bandwidth vs a device copy", "[.bench]") {
  if (!have_cuda()) SKIP("no CUDA device");
#ifdef FLUXBATCH_WITH_CUDA
  const c10::Device gpu(at::kCUDA);
  // FLUX single-block linear1 [21504, 3072], double quantized (Forge v1).
  const int64_t n = 21504, k = 3072;
  const quant::Nf4Tensor w =
      quant::quantize_nf4(at::randn({n, k}, at::TensorOptions().dtype(at::kBFloat16).device(gpu)), true);
  at::Tensor out = at::empty({n, k}, at::TensorOptions().dtype(at::kBFloat16).device(gpu));
  const at::Tensor src = at::randn({n, k}, at::TensorOptions().dtype(at::kBFloat16).device(gpu));
  at::Tensor dst = at::empty_like(src);

  auto seconds_per_call = [](const auto& fn) {
    for (int i = 0; i < 5; ++i) fn();
    c10::cuda::device_synchronize();
    constexpr int kIters = 50;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kIters; ++i) fn();
    c10::cuda::device_synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / kIters;
  };
  const double t_dequant = seconds_per_call([&] { ops::nf4_dequantize(w, out); });
  const double t_copy = seconds_per_call([&] { dst.copy_(src); });
  // Bytes read + written: codes, 8-bit absmax codes and the bf16 output; the copy reads and writes.
  const double dequant_bytes = double(w.packed.nbytes() + w.q8.nbytes() + out.nbytes());
  const double copy_bytes = 2.0 * double(src.nbytes());
  const double dequant_bw = dequant_bytes / t_dequant / 1e9;
  const double copy_bw = copy_bytes / t_copy / 1e9;
  std::printf("nf4_dequantize [%ld, %ld] nested -> bf16: %.1f us, %.0f GB/s; copy: %.1f us, %.0f GB/s; ratio %.2f\n",
              long(n), long(k), t_dequant * 1e6, dequant_bw, t_copy * 1e6, copy_bw, dequant_bw / copy_bw);
  CHECK(dequant_bw >= 0.8 * copy_bw);
#endif
}
