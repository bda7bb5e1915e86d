// The JSON of a bitsandbytes 4-bit weight's quant state ("<p>.weight.quant_state.bitsandbytes__nf4",
// a uint8 tensor of UTF-8 JSON written by bnb's QuantState.as_dict(packed=True)). Torch-free, so the
// fuzz target tests/fuzz/fuzz_bnb_quant_state.cpp can run it; nn::read_bnb_nf4 builds on it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fluxbatch::io {

inline constexpr int64_t kBnbBlockSize = 64;          // the only 4-bit block size FLUX files use
inline constexpr int64_t kBnbNestedBlockSize = 256;   // bnb quantize_4bit(compress_statistics=True)
// Larger weights are refused: the biggest FLUX.1 Linear has 3072 x 15360 = 47M values.
inline constexpr int64_t kBnbMaxValues = int64_t{1} << 40;

struct BnbQuantState {
  int64_t blocksize = kBnbBlockSize;
  std::string dtype;            // what dequantize produces: "bfloat16", "float16" or "float32"
  std::vector<int64_t> shape;   // [out_features, in_features], each > 0, product <= kBnbMaxValues
  bool nested = false;          // double quantization: nested_* fields present
  int64_t nested_blocksize = 0;
  float nested_offset = 0.0f;   // finite

  int64_t numel() const { return shape.size() == 2 ? shape[0] * shape[1] : 0; }
};

// Parses and validates the quant state JSON of weight `key` (named in every message): quant_type
// "nf4", blocksize 64, dtype as above, shape [out, in], nested_blocksize 256 / nested_dtype
// "float32" / nested_offset together or not at all, no other field. ModelError otherwise.
BnbQuantState parse_bnb_quant_state(std::string_view json_text, const std::string& key);

}  // namespace fluxbatch::io
