// Typed reads of config.json fields for the model config parsers (internal to src/models).
// Absent keys keep the struct's default; present keys of the wrong type or value are ModelErrors
// that name the file and the key.
#pragma once
#include "fluxbatch/core/error.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace fluxbatch::models::detail {

inline nlohmann::json read_config_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ModelError(path + ": cannot open the model config");
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object()) throw ModelError(path + ": the model config is not a JSON object");
  return root;
}

class ConfigFields {
 public:
  ConfigFields(const nlohmann::json& root, std::string path) : root_(root), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    std::string got = root_.contains(key) ? root_.at(key).dump() : "nothing";
    if (got.size() > 60) got = got.substr(0, 57) + "...";
    throw ModelError(path_ + ": \"" + key + "\" " + what + " (got " + got + ")");
  }

  // Absent or null: keep the default.
  bool has(const std::string& key) const { return root_.contains(key) && !root_.at(key).is_null(); }

  void get(const std::string& key, int64_t* out) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer");
    *out = v.get<int64_t>();
  }
  void get(const std::string& key, double* out) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_number()) fail(key, "must be a number");
    *out = v.get<double>();
  }
  void get(const std::string& key, bool* out) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_boolean()) fail(key, "must be true or false");
    *out = v.get<bool>();
  }
  void get(const std::string& key, std::string* out) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_string()) fail(key, "must be a string");
    *out = v.get<std::string>();
  }
  void get(const std::string& key, std::vector<int64_t>* out) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_array()) fail(key, "must be a list of integers");
    std::vector<int64_t> values;
    for (const auto& item : v) {
      if (!item.is_number_integer()) fail(key, "must be a list of integers");
      values.push_back(item.get<int64_t>());
    }
    *out = std::move(values);
  }
  // A list whose length must equal `expected` when present.
  void check_list_size(const std::string& key, size_t expected) const {
    if (!has(key)) return;
    const auto& v = root_.at(key);
    if (!v.is_array()) fail(key, "must be a list");
    if (v.size() != expected) fail(key, "must have " + std::to_string(expected) + " entries");
  }

 private:
  const nlohmann::json& root_;
  std::string path_;
};

// validate() helpers: `origin` names the file or checkpoint the config came from.
inline void require_positive(const std::string& origin, const char* key, int64_t value) {
  if (value <= 0) throw ModelError(origin + ": \"" + key + "\" must be positive (got " + std::to_string(value) + ")");
}

}  // namespace fluxbatch::models::detail
