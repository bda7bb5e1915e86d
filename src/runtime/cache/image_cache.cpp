#include "fluxbatch/runtime/cache/image_cache.h"

#include <cstdio>

namespace fluxbatch::runtime {
namespace {

// Each LoRA by content and scale, in order (the order of the side paths is the order of the sums).
// Nothing for an image without LoRAs, so the keys of such images are those of earlier versions.
std::string lora_key(const std::vector<job::LoraRef>& loras) {
  std::string out;
  for (const job::LoraRef& lora : loras) {
    char scale[40];
    std::snprintf(scale, sizeof scale, "%.17g", lora.scale);
    out += "\nlora " + (lora.sha256.empty() ? "path " + lora.path : lora.sha256) + " " + scale;
  }
  return out;
}

}  // namespace

ImageCache::ImageCache(std::shared_ptr<io::CacheStore> store, std::string identity)
    : store_(std::move(store)), identity_(std::move(identity)) {}

std::string ImageCache::key(const job::RenderItem& item) const {
  const job::RenderParams& p = item.params;
  char guidance[40];
  std::snprintf(guidance, sizeof guidance, "%.17g", p.guidance);  // exact: 3.5 and 3.5000000001 differ
  return "image\n" + identity_ + "\nprompt " + item.prompt + "\nseed " + std::to_string(p.seed) + "\nsize " +
         std::to_string(p.width) + "x" + std::to_string(p.height) + "\nsteps " + std::to_string(p.steps) +
         "\nguidance " + guidance + "\nmax_sequence_length " + std::to_string(p.max_sequence_length) +
         lora_key(p.loras) + (p.loras.empty() || lora_mode_.empty() ? "" : "\nlora mode " + lora_mode_);
}

std::optional<std::string> ImageCache::find(const job::RenderItem& item) { return store_->get(kKind, key(item)); }

void ImageCache::store(const job::RenderItem& item, const std::string& plain_png) {
  store_->put(kKind, key(item), plain_png);
}

}  // namespace fluxbatch::runtime
