// The NF4 checkpoints diffusers + bitsandbytes write on a GPU (tests/data/nf4/diffusers-gpu, made on the
// H100 by scripts/make_nf4_gpu_fixtures.py from models/tiny-flux-dev with BitsAndBytesConfig(load_in_4bit,
// nf4, compute bf16[, double quant])): fluxbatch loads them, and quantize_nf4 like kCuda reproduces every
// byte they hold (on a GPU exactly; on the CPU up to values within ulps of a code threshold, where bnb's
// MUFU.RCP reciprocal and a correctly rounded one disagree).
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/nf4_format.h"
#include "bnb_fixtures.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <cmath>
#include <filesystem>
#include <string>

using namespace fluxbatch;
namespace fs = std::filesystem;

namespace {

const fs::path kGpuFixtures = fs::path(FLUXBATCH_TEST_DATA) / "nf4" / "diffusers-gpu";
const fs::path kTinyTransformer = fs::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev" / "transformer";

struct Loaded {
  models::flux::FluxTransformer2DModel model{nullptr};
  nn::TensorMap dense;  // the bf16 source weights diffusers quantized
};

Loaded load_fixture(const std::string& variant) {
  const fs::path dir = kGpuFixtures / variant / "transformer";
  test::require_generated(dir / "diffusion_pytorch_model.safetensors");
  test::require_generated(kTinyTransformer / "diffusion_pytorch_model.safetensors");
  Loaded l;
  l.model = models::flux::FluxTransformer2DModel(models::flux::FluxConfig::from_json_file((dir / "config.json").string()),
                                                 at::TensorOptions().dtype(at::kFloat));
  nn::LoadOptions options;
  options.what = variant;
  nn::load_nf4_state(*l.model, nn::read_safetensors({(dir / "diffusion_pytorch_model.safetensors").string()}), options);
  l.dense = nn::read_safetensors({(kTinyTransformer / "diffusion_pytorch_model.safetensors").string()});
  return l;
}

// Codes (one per value) of a packed NF4 tensor.
at::Tensor codes(const at::Tensor& packed) {
  const at::Tensor p = packed.to(at::kCPU).reshape(-1).to(at::kInt);
  return at::stack({at::bitwise_right_shift(p, 4), at::bitwise_and(p, 15)}, 1).reshape(-1);
}

}  // namespace

TEST_CASE("diffusers' GPU-made NF4 transformer loads, and quantize_nf4 reproduces its bytes", "[nf4][quant][nf4-gpu-fixture]") {
  const std::string variant = GENERATE("nf4", "nf4-dq");
  const bool nested = variant == "nf4-dq";
  Loaded l = load_fixture(variant);
  const bool on_gpu = at::hasCUDA();
  const c10::Device device = on_gpu ? c10::Device(at::kCUDA) : c10::Device(at::kCPU);
  int64_t linears = 0, values = 0, differing = 0;
  for (const auto& item : l.model->named_modules("", false)) {
    auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(item.value());
    if (!linear) continue;
    INFO(variant << " " << item.key());
    REQUIRE(linear->is_nf4());  // diffusers quantizes every Linear of the transformer
    ++linears;
    const quant::Nf4Tensor& theirs = linear->nf4();
    CHECK(theirs.is_nested() == nested);
    const at::Tensor source = l.dense.at(item.key() + ".weight").to(at::kBFloat16).to(device);
    const quant::Nf4Tensor ours = quant::quantize_nf4(source, nested, quant::BnbBackend::kCuda).to(at::kCPU);
    REQUIRE(ours.shape == theirs.shape);
    if (nested) {
      CHECK(at::equal(ours.nested_quant_map, theirs.nested_quant_map));
      // The offset is a mean, reduced in another order on the CPU than on the GPU.
      CHECK(std::fabs(ours.offset - theirs.offset) <= 1e-6f * std::fabs(theirs.offset));
    } else {
      CHECK(at::equal(ours.absmax, theirs.absmax));  // the block maxima involve no rounding
    }
    const at::Tensor diff = codes(ours.packed).ne(codes(theirs.packed));
    values += diff.numel();
    differing += diff.sum().item<int64_t>();
    if (on_gpu) {
      CHECK(at::equal(ours.packed, theirs.packed));  // bnb's own instructions: bit for bit
      if (nested) {
        CHECK(ours.offset == theirs.offset);
        CHECK(at::equal(ours.nested_absmax, theirs.nested_absmax));
      }
    }
  }
  CHECK(linears > 0);
  // The CPU reciprocal is correctly rounded, bnb's is not: a few codes may sit on the other side of a
  // threshold. On a GPU, none may.
  INFO(differing << " of " << values << " codes differ");
  CHECK(differing <= (on_gpu ? 0 : values / 1000));
}

TEST_CASE("CUDA quantize_nf4 is bitsandbytes' CUDA quantize_4bit bit for bit", "[nf4][quant][cuda]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  const auto f = test::load_bnb_fixtures("cuda");
  REQUIRE(f);
  for (const auto& name : f->nf4_cases) {
    INFO(name);
    const at::Tensor input = f->at(name + ".input");
    const quant::Nf4Tensor plain = quant::quantize_nf4(input.to(at::kCUDA), false, quant::BnbBackend::kCuda);
    CHECK(plain.packed.is_cuda());
    CHECK(at::equal(plain.packed.cpu(), f->at(name + ".plain.packed")));
    CHECK(at::equal(plain.absmax.cpu(), f->at(name + ".plain.absmax")));
  }
}
