// libFuzzer target over the shard index parser (io::parse_shard_index): every input either parses
// into shards that all lie directly in the index's folder, or fails with a ModelError naming the
// index. Any other exception, a crash, a sanitizer report or a hang is a bug.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/shard_index.h"

using namespace fluxbatch;

namespace {

const std::string kIndex = "/models/m/transformer/diffusion_pytorch_model.safetensors.index.json";

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const io::ShardIndex index = io::parse_shard_index(text, kIndex);
    require(!index.weight_map.empty() && !index.shards.empty());
    const std::filesystem::path dir = std::filesystem::path(kIndex).parent_path();
    std::set<std::string> unique(index.shards.begin(), index.shards.end());
    require(unique.size() == index.shards.size());
    for (const std::string& shard : index.shards) {
      const std::filesystem::path p(shard);
      require(p.parent_path() == dir);
      const std::string name = p.filename().string();
      require(!name.empty() && name != "." && name != ".." && name.find('\0') == std::string::npos);
      require(shard.find('\0') == std::string::npos);
    }
    for (const auto& [tensor, shard] : index.weight_map) require(unique.count(shard) == 1);
  } catch (const ModelError& e) {
    require(std::string(e.what()).rfind(kIndex + ": ", 0) == 0);
  }
  return 0;
}
