#include "bnb_fixtures.h"

#include "fluxbatch/io/safetensors.h"

#include <ATen/ATen.h>
#include <catch2/catch_test_macros.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>

namespace fluxbatch::test {
namespace {

at::Tensor as_bits(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().cpu();
  switch (c.element_size()) {
    case 1: return c.view(at::kByte);
    case 2: return c.view(at::kShort);
    case 4: return c.view(at::kInt);
    default: return c.view(at::kLong);
  }
}

std::vector<std::string> string_list(const std::map<std::string, std::string>& metadata, const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) FAIL("fixture metadata lacks " + key);
  return nlohmann::json::parse(it->second).get<std::vector<std::string>>();
}

}  // namespace

const at::Tensor& BnbFixtures::at(const std::string& name) const {
  const auto it = tensors.find(name);
  if (it == tensors.end()) FAIL("bnb_" + backend + " fixtures lack " + name + ": rerun scripts/make_nf4_fixtures.py");
  return it->second;
}

quant::Nf4Tensor BnbFixtures::nf4(const std::string& nf4_case, const std::string& variant,
                                  c10::ScalarType dtype) const {
  const std::string p = nf4_case + "." + variant + ".";
  quant::Nf4Tensor w;
  w.shape = at(nf4_case + ".input").sizes().vec();
  w.dtype = dtype;
  w.packed = at(p + "packed");
  if (variant == "nested") {
    w.q8 = at(p + "q8");
    w.nested_absmax = at(p + "nested_absmax");
    w.nested_quant_map = at(p + "nested_quant_map");
    w.offset = at(p + "offset").item<float>();
  } else {
    w.absmax = at(p + "absmax");
  }
  w.validate("fixture " + p);
  return w;
}

std::string bnb_fixture_path(const std::string& backend) {
  return std::string(FLUXBATCH_TEST_DATA) + "/nf4/bnb_" + backend + ".safetensors";
}

std::optional<BnbFixtures> load_bnb_fixtures(const std::string& backend) {
  const std::string path = bnb_fixture_path(backend);
  if (!std::filesystem::exists(path)) return std::nullopt;
  BnbFixtures f;
  f.backend = backend;
  f.tensors = nn::read_safetensors({path});
  const auto file = io::SafetensorsFile::open(path);
  REQUIRE(file->metadata().at("backend") == backend);
  REQUIRE(file->metadata().at("bitsandbytes") == "0.49.2");
  f.nf4_cases = string_list(file->metadata(), "nf4_cases");
  f.dyn_cases = string_list(file->metadata(), "dyn_cases");
  return f;
}

bool bits_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && at::equal(as_bits(a), as_bits(b));
}

std::string bits_diff(const at::Tensor& a, const at::Tensor& b) {
  std::ostringstream out;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) {
    out << a.scalar_type() << a.sizes() << " vs " << b.scalar_type() << b.sizes();
    return out.str();
  }
  // Bit patterns as non-negative integers of the element's width.
  const int64_t mask = a.element_size() >= 8 ? -1 : (int64_t{1} << (8 * a.element_size())) - 1;
  const at::Tensor x = as_bits(a).reshape(-1).to(at::kLong).bitwise_and(mask);
  const at::Tensor y = as_bits(b).reshape(-1).to(at::kLong).bitwise_and(mask);
  const at::Tensor diff = at::nonzero(x != y).reshape(-1);
  out << diff.numel() << " of " << x.numel() << " values differ";
  if (diff.numel() > 0) {
    const int64_t i = diff[0].item<int64_t>();
    out << ", first at " << i << ": 0x" << std::hex << x[i].item<int64_t>() << " vs 0x" << y[i].item<int64_t>()
        << std::dec << " (" << a.reshape(-1)[i].item<double>() << " vs " << b.reshape(-1)[i].item<double>() << ")";
  }
  return out.str();
}

}  // namespace fluxbatch::test
