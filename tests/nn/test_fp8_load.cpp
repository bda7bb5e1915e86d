// fp8 checkpoints (Forge / ComfyUI T5 files): read from safetensors and widened exactly on load.
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/weights.h"
#include "test_support.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>

using namespace fluxbatch;

TEST_CASE("F8_E4M3 and F8_E5M2 tensors load into any compute dtype with their exact values", "[forge]") {
  for (c10::ScalarType fp8 : {at::kFloat8_e4m3fn, at::kFloat8_e5m2}) {
    for (c10::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      INFO(c10::toString(fp8) << " -> " << c10::toString(dtype));
      test::TempDir dir;
      at::manual_seed(7);
      const at::Tensor weight = (at::randn({8, 16}) * 0.1).to(fp8);
      const at::Tensor bias = at::randn({8}).to(fp8);
      const std::string path = (dir / "fp8.safetensors").string();
      nn::write_safetensors(path, {{"weight", weight}, {"bias", bias}});
      const nn::TensorMap read = nn::read_safetensors({path});
      REQUIRE(read.at("weight").scalar_type() == fp8);
      nn::Linear linear(16, 8, true, at::TensorOptions().dtype(dtype));
      nn::LoadOptions options;
      options.dtype = dtype;
      nn::load_state(*linear, read, options);
      CHECK(linear->weight.scalar_type() == dtype);
      CHECK(at::equal(linear->weight.to(at::kFloat), weight.to(at::kFloat)));
      CHECK(at::equal(linear->bias.to(at::kFloat), bias.to(at::kFloat)));
    }
  }
}
