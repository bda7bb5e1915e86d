#include "job/param_rules.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "fluxbatch/job/job_loader.h"
#include "job/text_util.h"

namespace fluxbatch::job::detail {
namespace {

using nlohmann::json;

struct IntRange {
  const char* key;
  long long lo;
  long long hi;
};

constexpr IntRange kIntRanges[] = {
    {"steps", 1, kMaxSteps},
    {"count", 1, kMaxCount},
    {"max_sequence_length", kMinSequenceLength, kMaxSequenceLength},
    {"priority", -kMaxPriority, kMaxPriority},
};

const IntRange* int_range(const std::string& key) {
  for (const auto& range : kIntRanges) {
    if (key == range.key) return &range;
  }
  return nullptr;
}

std::string side_expectation() {
  return "expected a multiple of 16 from " + std::to_string(kMinSide) + " to " +
         std::to_string(kMaxSide);
}

std::string int_expectation(const IntRange& range) {
  return "expected an integer from " + std::to_string(range.lo) + " to " + std::to_string(range.hi);
}

std::string guidance_expectation() {
  auto text = [](double value) {
    std::ostringstream out;
    out << value;
    return out.str();
  };
  return "expected a number from " + text(kMinGuidance) + " to " + text(kMaxGuidance);
}

const char* seed_expectation() {
  return "expected an integer from 0 to 18446744073709551615 or \"random\"";
}

// The value as a long long when it is a JSON integer that fits.
std::optional<long long> as_integer(const json& value) {
  if (value.is_number_integer() && !value.is_number_unsigned()) return value.get<long long>();
  if (value.is_number_unsigned() &&
      value.get<unsigned long long>() <= static_cast<unsigned long long>(
                                             std::numeric_limits<long long>::max())) {
    return static_cast<long long>(value.get<unsigned long long>());
  }
  return std::nullopt;
}

}  // namespace

bool is_param_key(const std::string& key) {
  return key == "width" || key == "height" || key == "steps" || key == "guidance" || key == "seed" ||
         key == "count" || key == "max_sequence_length";
}

std::string describe(const json& value) {
  switch (value.type()) {
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: {
      return json(truncate_utf8(value.get_ref<const std::string&>(), 40))
          .dump(-1, ' ', false, json::error_handler_t::replace);
    }
    default: return value.dump();
  }
}

std::string check_side(int value) {
  if (value >= kMinSide && value <= kMaxSide && value % 16 == 0) return "";
  return side_expectation() + ", got " + std::to_string(value);
}

std::string check_int(const std::string& key, long long value) {
  const IntRange* range = int_range(key);
  if (range == nullptr || (value >= range->lo && value <= range->hi)) return "";
  return int_expectation(*range) + ", got " + std::to_string(value);
}

std::string check_guidance(double value) {
  if (std::isfinite(value) && value >= kMinGuidance && value <= kMaxGuidance) return "";
  return guidance_expectation() + ", got " + json(value).dump();
}

std::string read_param(const std::string& key, const json& value, ParamOverrides* out) {
  const std::string got = ", got " + describe(value);
  if (key == "seed") {
    if (value.is_string() && value.get_ref<const std::string&>() == "random") {
      out->random_seed = true;
      return "";
    }
    if (value.is_number_unsigned()) {  // nlohmann stores non-negative integers as unsigned...
      out->seed = value.get<uint64_t>();
      return "";
    }
    if (value.is_number_integer() && value.get<int64_t>() == 0) {  // ...except "-0"
      out->seed = 0;
      return "";
    }
    return seed_expectation() + got;
  }
  if (key == "guidance") {
    if (!value.is_number()) return guidance_expectation() + got;
    const std::string problem = check_guidance(value.get<double>());
    if (problem.empty()) out->guidance = value.get<double>();
    return problem.empty() ? "" : guidance_expectation() + got;
  }
  const bool side = key == "width" || key == "height";
  const std::optional<long long> number = as_integer(value);
  const IntRange* range = int_range(key);
  const std::string expectation = side ? side_expectation() : int_expectation(*range);
  if (!number) return expectation + got;
  const std::string problem = side ? check_side(static_cast<int>(std::max<long long>(
                                         std::min<long long>(*number, kMaxSide + 1), 0)))
                                   : check_int(key, *number);
  if (!problem.empty()) return expectation + got;
  const int checked = static_cast<int>(*number);
  if (key == "width") out->width = checked;
  if (key == "height") out->height = checked;
  if (key == "steps") out->steps = checked;
  if (key == "count") out->count = checked;
  if (key == "max_sequence_length") out->max_sequence_length = checked;
  return "";
}

std::string check_lora_scale(double value) {
  if (std::isfinite(value) && value >= kMinLoraScale && value <= kMaxLoraScale) return "";
  std::ostringstream out;
  out << "expected a number from " << kMinLoraScale << " to " << kMaxLoraScale << ", got " << json(value).dump();
  return out.str();
}

std::string read_lora_scale(const json& value, double* out) {
  if (value.is_number() && check_lora_scale(value.get<double>()).empty()) {
    *out = value.get<double>();
    return "";
  }
  // The value as written (11, not 11.0).
  std::ostringstream expectation;
  expectation << "expected a number from " << kMinLoraScale << " to " << kMaxLoraScale << ", got " << describe(value);
  return expectation.str();
}

std::string read_priority(const json& value, int* out) {
  const IntRange& range = *int_range("priority");
  const std::optional<long long> number = as_integer(value);
  if (!number || !check_int("priority", *number).empty()) {
    return int_expectation(range) + ", got " + describe(value);
  }
  *out = static_cast<int>(*number);
  return "";
}

}  // namespace fluxbatch::job::detail
