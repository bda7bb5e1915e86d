// The small JSON texts of the bitsandbytes serialization, formatted as Python writes them.
#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/model_io/quantize_model.h"

#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

namespace fluxbatch::runtime {

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "NaN";  // json.dumps spells the non-finite values this way
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  if (value == 0.0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits, as repr() picks them; only the layout differs between the two.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  const std::string sign = sci[0] == '-' ? "-" : "";
  if (!sign.empty()) sci.erase(0, 1);
  const auto e = sci.find('e');
  const int exponent = std::atoi(sci.c_str() + e + 1);
  std::string digits = sci.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  if (exponent < -4 || exponent >= 16) {
    // repr: d[.ddd]e[+-]XX, at least two exponent digits.
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    const int magnitude = std::abs(exponent);
    out += std::string("e") + (exponent < 0 ? "-" : "+") + (magnitude < 10 ? "0" : "") + std::to_string(magnitude);
    return out;
  }
  std::string out;
  if (exponent < 0) {
    out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else if (static_cast<size_t>(exponent) + 1 >= digits.size()) {
    out = digits + std::string(static_cast<size_t>(exponent) + 1 - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, static_cast<size_t>(exponent) + 1) + "." + digits.substr(static_cast<size_t>(exponent) + 1);
  }
  return sign + out;
}

std::string bnb_quant_state_json(const quant::Nf4Tensor& w) {
  const char* dtype = w.dtype == c10::kBFloat16 ? "bfloat16" : w.dtype == c10::kHalf ? "float16" : "float32";
  std::string shape;
  for (int64_t d : w.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  // json.dumps(dict) with the default separators, keys in QuantState.as_dict's insertion order.
  std::string out = "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(w.blocksize) + ", \"dtype\": \"" +
                    dtype + "\", \"shape\": [" + shape + "]";
  if (w.is_nested()) {
    out += ", \"nested_blocksize\": " + std::to_string(w.nested_blocksize) +
           ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(static_cast<double>(w.offset));
  }
  return out + "}";
}

std::string bnb_nf4_config_json(const std::string& config_json, const std::string& name_or_path, bool double_quant) {
  nlohmann::json config;  // std::map: keys sorted bytewise, as sort_keys=True sorts ASCII keys
  try {
    config = nlohmann::json::parse(config_json);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(std::string("transformer config.json is not valid JSON (") + e.what() + ")");
  }
  FLUXBATCH_CHECK(config.is_object(), ModelError, "transformer config.json is not a JSON object");
  config["_name_or_path"] = name_or_path;
  // diffusers BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
  // bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=...).to_dict()
  config["quantization_config"] = {
      {"_load_in_4bit", true},
      {"_load_in_8bit", false},
      {"bnb_4bit_compute_dtype", "bfloat16"},
      {"bnb_4bit_quant_storage", "uint8"},
      {"bnb_4bit_quant_type", "nf4"},
      {"bnb_4bit_use_double_quant", double_quant},
      {"llm_int8_enable_fp32_cpu_offload", false},
      {"llm_int8_has_fp16_weight", false},
      {"llm_int8_skip_modules", nullptr},
      {"llm_int8_threshold", 6.0},
      {"load_in_4bit", true},
      {"load_in_8bit", false},
      {"quant_method", "bitsandbytes"},
  };
  // json.dumps(indent=2, sort_keys=True) + "\n"; ensure_ascii like Python's default.
  return config.dump(2, ' ', /*ensure_ascii=*/true) + "\n";
}

}  // namespace fluxbatch::runtime
