// Reads the bitsandbytes-made fixtures of scripts/make_nf4_fixtures.py (tests/data/nf4/bnb_<backend>.safetensors).
#pragma once
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace fluxbatch::test {

struct BnbFixtures {
  std::string backend;  // "cpu" or "cuda": which bitsandbytes implementation made them
  nn::TensorMap tensors;
  std::vector<std::string> nf4_cases;
  std::vector<std::string> dyn_cases;

  // The tensor `name`; FAILs the test when the file lacks it.
  const at::Tensor& at(const std::string& name) const;
  bool has(const std::string& name) const { return tensors.count(name) > 0; }
  // The stored quantization of `nf4_case` ("plain" or "nested") as an Nf4Tensor of dtype `dtype`.
  quant::Nf4Tensor nf4(const std::string& nf4_case, const std::string& variant,
                       c10::ScalarType dtype) const;
};

std::string bnb_fixture_path(const std::string& backend);
// The fixtures, or nothing when the file does not exist (only the cuda file may be absent: it needs a GPU).
std::optional<BnbFixtures> load_bnb_fixtures(const std::string& backend);

// Bitwise equality of two tensors of the same dtype (so -0.0 != 0.0 and NaN == NaN of the same bits).
bool bits_equal(const at::Tensor& a, const at::Tensor& b);
// "3 of 4096 values differ, first at 17: 0x3f80 vs 0xbf80" for a failing bits_equal.
std::string bits_diff(const at::Tensor& a, const at::Tensor& b);

}  // namespace fluxbatch::test
