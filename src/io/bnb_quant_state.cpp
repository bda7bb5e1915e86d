#include "fluxbatch/io/bnb_quant_state.h"

#include <cfloat>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "fluxbatch/core/error.h"

namespace fluxbatch::io {

BnbQuantState parse_bnb_quant_state(std::string_view json_text, const std::string& key) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(key + ": the quant state is not valid JSON (" + e.what() + ")");
  }
  FLUXBATCH_CHECK(j.is_object(), ModelError, key + ": the quant state must be a JSON object");
  static const std::set<std::string> kKnown = {"quant_type", "blocksize",        "dtype",       "shape",
                                               "nested_blocksize", "nested_dtype", "nested_offset"};
  for (const auto& item : j.items()) {
    FLUXBATCH_CHECK(kKnown.count(item.key()) != 0, ModelError, key + ": unexpected quant state field \"" + item.key() + "\"");
  }
  auto field = [&](const char* name) -> const nlohmann::json& {
    FLUXBATCH_CHECK(j.contains(name), ModelError, key + ": the quant state lacks \"" + std::string(name) + "\"");
    return j.at(name);
  };
  BnbQuantState q;
  try {
    const auto& type = field("quant_type");
    FLUXBATCH_CHECK(type.is_string() && type.get<std::string>() == "nf4", ModelError,
                    key + ": quant_type " + type.dump() + " is not \"nf4\"");
    const auto& block = field("blocksize");
    FLUXBATCH_CHECK(block.is_number_integer() && block.get<int64_t>() == kBnbBlockSize, ModelError,
                    key + ": blocksize " + block.dump() + " is not 64 (the only one supported)");
    q.blocksize = kBnbBlockSize;
    const auto& dtype = field("dtype");
    FLUXBATCH_CHECK(dtype.is_string(), ModelError, key + ": dtype must be a string");
    q.dtype = dtype.get<std::string>();
    FLUXBATCH_CHECK(q.dtype == "bfloat16" || q.dtype == "float16" || q.dtype == "float32", ModelError,
                    key + ": unsupported dtype \"" + q.dtype + "\" (bfloat16, float16 or float32)");
    const auto& shape = field("shape");
    FLUXBATCH_CHECK(shape.is_array() && shape.size() == 2, ModelError,
                    key + ": shape " + shape.dump() + " is not [out_features, in_features]");
    for (const auto& d : shape) {
      FLUXBATCH_CHECK(d.is_number_integer() && d.get<int64_t>() > 0, ModelError,
                      key + ": shape " + shape.dump() + " has a dimension that is not a positive integer");
      q.shape.push_back(d.get<int64_t>());
    }
    // Checked by division: the product itself could overflow.
    FLUXBATCH_CHECK(q.shape[0] <= kBnbMaxValues / q.shape[1], ModelError,
                    key + ": shape " + shape.dump() + " is implausibly large (more than 2^40 values)");
    const int present = static_cast<int>(j.contains("nested_blocksize")) + static_cast<int>(j.contains("nested_dtype")) +
                        static_cast<int>(j.contains("nested_offset"));
    FLUXBATCH_CHECK(present == 0 || present == 3, ModelError,
                    key + ": nested_blocksize, nested_dtype and nested_offset must come together");
    if (present == 3) {
      q.nested = true;
      const auto& nb = j.at("nested_blocksize");
      FLUXBATCH_CHECK(nb.is_number_integer() && nb.get<int64_t>() == kBnbNestedBlockSize, ModelError,
                      key + ": nested_blocksize " + nb.dump() + " is not 256");
      q.nested_blocksize = kBnbNestedBlockSize;
      const auto& nd = j.at("nested_dtype");
      FLUXBATCH_CHECK(nd.is_string() && nd.get<std::string>() == "float32", ModelError,
                      key + ": nested_dtype " + nd.dump() + " is not \"float32\"");
      const auto& off = j.at("nested_offset");
      FLUXBATCH_CHECK(off.is_number(), ModelError, key + ": nested_offset must be a number");
      const double offset = off.get<double>();
      FLUXBATCH_CHECK(std::isfinite(offset) && std::fabs(offset) <= FLT_MAX, ModelError,
                      key + ": nested_offset " + off.dump() + " is not a finite float32");
      q.nested_offset = static_cast<float>(offset);
    }
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(key + ": malformed quant state (" + std::string(e.what()) + ")");
  }
  return q;
}

}  // namespace fluxbatch::io
