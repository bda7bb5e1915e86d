// The torch-free model-file parsers the fuzz targets run (tests/fuzz): shard indexes and bitsandbytes
// quant states, including the hostile inputs they must refuse.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/bnb_quant_state.h"
#include "fluxbatch/io/shard_index.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::ModelError;
using fluxbatch::io::parse_bnb_quant_state;
using fluxbatch::io::parse_shard_index;

namespace {
const std::string kIndex = "/m/transformer/diffusion_pytorch_model.safetensors.index.json";
const std::string kKey = "proj_out.weight.quant_state.bitsandbytes__nf4";
}  // namespace

TEST_CASE("a shard index lists each shard once, in first-mention order, beside the index", "[io][parsers]") {
  const auto index = parse_shard_index(R"({"metadata": {}, "weight_map": {"b": "s2.safetensors", "a": "s1.safetensors",
                                          "c": "s2.safetensors"}})",
                                       kIndex);
  // nlohmann orders keys: a, b, c.
  CHECK(index.shards == std::vector<std::string>{"/m/transformer/s1.safetensors", "/m/transformer/s2.safetensors"});
  CHECK(index.weight_map.at("c") == "/m/transformer/s2.safetensors");
}

TEST_CASE("a shard index may not reach outside its folder or list nothing", "[io][parsers]") {
  for (const char* name : {"../x.safetensors", "/etc/passwd", "..", ".", "", "sub/x.safetensors"}) {
    INFO(name);
    CHECK_THROWS_WITH(parse_shard_index(std::string(R"({"weight_map": {"t": ")") + name + "\"}}", kIndex),
                      ContainsSubstring("not a file beside the index"));
  }
  // A NUL would cut the path short when opened: "x.safetensors\0../../y" names another file.
  CHECK_THROWS_WITH(parse_shard_index(R"({"weight_map": {"t": "x.safetensors\u0000../../y"}})", kIndex),
                    kIndex + ": weight_map entry 't' names \"x.safetensors\\u0000../../y\", not a file beside the index");
  CHECK_THROWS_WITH(parse_shard_index(R"({"weight_map": {}})", kIndex), ContainsSubstring("lists no tensor"));
  CHECK_THROWS_WITH(parse_shard_index(R"({"weight_map": {"t": 3}})", kIndex), ContainsSubstring("is not a file name"));
  CHECK_THROWS_WITH(parse_shard_index("{\"weight_map\": ", kIndex), ContainsSubstring(kIndex + ": not valid JSON"));
}

TEST_CASE("a bitsandbytes quant state parses as bnb writes it", "[io][parsers]") {
  const auto q = parse_bnb_quant_state(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [128, 32],
                                          "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.25})",
                                       kKey);
  CHECK(q.shape == std::vector<int64_t>{128, 32});
  CHECK(q.numel() == 4096);
  CHECK(q.nested);
  CHECK(q.nested_offset == 0.25f);
  CHECK(q.dtype == "bfloat16");
}

TEST_CASE("hostile quant states are refused naming the weight", "[io][parsers]") {
  const auto error = [](const std::string& json) {
    try {
      parse_bnb_quant_state(json, kKey);
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // The size arithmetic downstream ((numel + 1) / 2, blocks) would overflow.
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4294967296, 4294967296]})"),
             ContainsSubstring(kKey + ": shape [4294967296,4294967296] is implausibly large"));
  // float(1e39) is undefined behaviour.
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 2],
                      "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39})"),
             ContainsSubstring("nested_offset 1e+39 is not a finite float32"));
  CHECK_THAT(error(R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float16", "shape": [2, 2]})"),
             ContainsSubstring("is not \"nf4\""));
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [2, 2]})"),
             ContainsSubstring("unsupported dtype \"int8\""));
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 0]})"),
             ContainsSubstring("not a positive integer"));
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 2], "extra": 1})"),
             ContainsSubstring("unexpected quant state field \"extra\""));
  CHECK_THAT(error(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [2, 2], "nested_offset": 1})"),
             ContainsSubstring("must come together"));
  CHECK_THAT(error("NaN"), ContainsSubstring("not valid JSON"));
}
