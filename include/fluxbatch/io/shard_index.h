// "<name>.safetensors.index.json": the shard index of a sharded component, {"weight_map": {tensor:
// shard file}}. Torch-free, so the fuzz target tests/fuzz/fuzz_shard_index.cpp can run it.
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace fluxbatch::io {

struct ShardIndex {
  std::vector<std::string> shards;                // unique, in first-mention order, full paths
  std::map<std::string, std::string> weight_map;  // tensor -> full shard path
};

// Parses the index text of the file `index_path` (used for messages and to resolve the shard names
// against its folder). ModelError naming `index_path` when the text is not JSON, has no
// "weight_map" object, lists no tensor, or names a shard that is not a plain file name beside the
// index (no '/', no "..", no NUL): an index must not reach outside its folder.
ShardIndex parse_shard_index(std::string_view text, const std::string& index_path);

// Reads and parses `index_path` (ModelError when it cannot be read or is larger than 64 MiB).
ShardIndex read_shard_index(const std::string& index_path);

}  // namespace fluxbatch::io
