// Reads tests/golden/tokens.json (written by scripts/dump_reference.py from transformers' tokenizers).
#pragma once
#include <catch2/catch_test_macros.hpp>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_support.h"

namespace fluxbatch::test {

struct GoldenTokens {
  std::string text;
  std::size_t max_length = 0;
  std::vector<std::int64_t> ids;
};

// section: "clip" or "t5".
inline std::vector<GoldenTokens> load_golden_tokens(const std::string& section) {
  const auto path = require_generated(std::filesystem::path(FLUXBATCH_GOLDEN_DIR) / "tokens.json");
  std::ifstream in(path);
  const nlohmann::json json = nlohmann::json::parse(in);
  std::vector<GoldenTokens> cases;
  for (const auto& entry : json.at(section)) {
    GoldenTokens c;
    c.text = entry.at("text").get<std::string>();
    c.ids = entry.at("ids").get<std::vector<std::int64_t>>();
    c.max_length = entry.contains("max_length") ? entry.at("max_length").get<std::size_t>() : c.ids.size();
    cases.push_back(std::move(c));
  }
  return cases;
}

// The message of the E that f() throws; fails the test when f() throws nothing (another type propagates).
template <typename E, typename F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("expected an exception, none was thrown");
  return {};
}

inline std::filesystem::path tiny_tokenizer_dir(const std::string& sub) {
  return require_generated(std::filesystem::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev" / sub);
}

}  // namespace fluxbatch::test
