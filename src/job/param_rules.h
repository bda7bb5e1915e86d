// The documented ranges of the per-image parameters (width, steps, seed, ...) and their checks,
// shared by JSON fields and command-line values.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::job::detail {

bool is_param_key(const std::string& key);

// Reads the parameter `key` from a JSON value into `out`; returns the problem ("expected ...,
// got ...") or "" when it is valid.
std::string read_param(const std::string& key, const nlohmann::json& value, ParamOverrides* out);

// Reads a LoRA's "scale" (a number from kMinLoraScale to kMaxLoraScale).
std::string read_lora_scale(const nlohmann::json& value, double* out);
std::string check_lora_scale(double value);

// Reads an item's "priority".
std::string read_priority(const nlohmann::json& value, int* out);

// Checks values that arrived already typed (command line). Calls report(key, problem) per problem.
template <typename Report>
void check_overrides(const ParamOverrides& overrides, Report report);

// Problems of typed values, "" when fine (used by check_overrides).
std::string check_side(int value);
std::string check_int(const std::string& key, long long value);
std::string check_guidance(double value);

// Short description of a JSON value for "got ..." ("0", "\"abc\"", "an array").
std::string describe(const nlohmann::json& value);

template <typename Report>
void check_overrides(const ParamOverrides& overrides, Report report) {
  auto check = [&report](const char* key, const std::string& problem) {
    if (!problem.empty()) report(key, problem);
  };
  if (overrides.width) check("width", check_side(*overrides.width));
  if (overrides.height) check("height", check_side(*overrides.height));
  if (overrides.steps) check("steps", check_int("steps", *overrides.steps));
  if (overrides.count) check("count", check_int("count", *overrides.count));
  if (overrides.max_sequence_length) {
    check("max_sequence_length", check_int("max_sequence_length", *overrides.max_sequence_length));
  }
  if (overrides.guidance) check("guidance", check_guidance(*overrides.guidance));
  if (overrides.loras) {
    if (overrides.loras->size() > static_cast<size_t>(kMaxLorasPerImage)) {
      check("lora", "given " + std::to_string(overrides.loras->size()) + " times; the limit is " +
                        std::to_string(kMaxLorasPerImage) + " LoRAs per image");
    }
    for (const LoraRef& lora : *overrides.loras) {
      if (lora.path.empty()) check("lora", "expected PATH or PATH:SCALE, got an empty path");
      const std::string problem = check_lora_scale(lora.scale);
      if (!problem.empty()) check("lora", lora.path + ": scale " + problem);
    }
  }
}

}  // namespace fluxbatch::job::detail
