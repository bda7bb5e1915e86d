// Reading tests/golden/cases.json and the case_<k>.safetensors tensors (a small self-contained
// safetensors reader: goldens are tiny, read whole into memory).
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_support.h"

namespace fluxbatch::test {

inline std::map<std::string, at::Tensor> read_golden_tensors(const std::filesystem::path& path) {
  std::ifstream in(require_generated(path), std::ios::binary);
  uint64_t header_size = 0;
  in.read(reinterpret_cast<char*>(&header_size), sizeof header_size);
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto doc = nlohmann::json::parse(header);
  const std::map<std::string, at::ScalarType> dtypes = {
      {"F32", at::kFloat}, {"BF16", at::kBFloat16}, {"F16", at::kHalf},  {"F64", at::kDouble},
      {"I64", at::kLong},  {"I32", at::kInt},       {"U8", at::kByte},   {"BOOL", at::kBool}};
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, info] : doc.items()) {
    if (name == "__metadata__") continue;
    const auto shape = info.at("shape").get<std::vector<int64_t>>();
    const auto offsets = info.at("data_offsets").get<std::vector<size_t>>();
    const at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtypes.at(info.at("dtype").get<std::string>())));
    if (offsets[1] - offsets[0] != t.nbytes()) throw std::runtime_error(path.string() + ": bad span for " + name);
    std::memcpy(t.data_ptr(), data.data() + offsets[0], t.nbytes());
    out.emplace(name, t);
  }
  return out;
}

struct GoldenCase {
  int index = 0;
  std::string variant;  // "dev" | "schnell"
  std::string model;    // folder under models/
  std::string file;     // relative to tests/golden
  std::vector<std::string> prompts;
  std::vector<uint64_t> seeds;
  int width = 0, height = 0, steps = 0, max_sequence_length = 0;
  double guidance = 0.0;
};

inline std::vector<GoldenCase> read_golden_cases(const std::filesystem::path& golden_dir) {
  std::ifstream in(require_generated(golden_dir / "cases.json"));
  const auto doc = nlohmann::json::parse(in);
  std::vector<GoldenCase> cases;
  for (const auto& c : doc.at("cases")) {
    GoldenCase g;
    g.index = c.at("index").get<int>();
    g.variant = c.at("variant").get<std::string>();
    g.model = c.at("model").get<std::string>();
    g.file = c.at("file").get<std::string>();
    g.prompts = c.at("prompts").get<std::vector<std::string>>();
    g.seeds = c.at("seeds").get<std::vector<uint64_t>>();
    g.width = c.at("width").get<int>();
    g.height = c.at("height").get<int>();
    g.steps = c.at("steps").get<int>();
    g.guidance = c.at("guidance").get<double>();
    g.max_sequence_length = c.at("max_sequence_length").get<int>();
    cases.push_back(g);
  }
  if (cases.empty()) throw std::runtime_error("cases.json lists no cases");
  return cases;
}

}  // namespace fluxbatch::test
