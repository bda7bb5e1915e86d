#include "fluxbatch/io/shard_index.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fluxbatch/core/error.h"

namespace fluxbatch::io {
namespace {

// Real indexes of FLUX-sized models are a few hundred KiB.
constexpr std::uintmax_t kMaxIndexBytes = std::uintmax_t{64} << 20;

// A name as messages show it: 'name', or JSON-escaped when it holds control characters (a NUL would
// cut the message short).
std::string shown(const std::string& name) {
  for (unsigned char c : name) {
    if (c < 0x20) return nlohmann::json(name).dump();
  }
  return "'" + name + "'";
}

}  // namespace

ShardIndex parse_shard_index(std::string_view text, const std::string& index_path) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(index_path + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
    throw ModelError(index_path + ": no \"weight_map\" object (expected a safetensors shard index)");
  }
  const auto& weight_map = root["weight_map"];
  if (weight_map.empty()) throw ModelError(index_path + ": \"weight_map\" lists no tensor");
  const std::filesystem::path dir = std::filesystem::path(index_path).parent_path();
  ShardIndex index;
  std::set<std::string> seen;
  for (const auto& [tensor, file] : weight_map.items()) {
    if (!file.is_string()) throw ModelError(index_path + ": weight_map entry " + shown(tensor) + " is not a file name");
    const std::string name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name.find('\0') != std::string::npos ||
        name == "." || name == "..") {
      throw ModelError(index_path + ": weight_map entry " + shown(tensor) + " names " + shown(name) +
                       ", not a file beside the index");
    }
    const std::string shard = (dir / name).string();
    index.weight_map[tensor] = shard;
    if (seen.insert(shard).second) index.shards.push_back(shard);
  }
  return index;
}

ShardIndex read_shard_index(const std::string& index_path) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(index_path, ec);
  if (!ec && size > kMaxIndexBytes) {
    throw ModelError(index_path + ": " + std::to_string(size) + " bytes, too large for a shard index");
  }
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw ModelError(index_path + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ModelError(index_path + ": cannot read");
  return parse_shard_index(text.str(), index_path);
}

}  // namespace fluxbatch::io
