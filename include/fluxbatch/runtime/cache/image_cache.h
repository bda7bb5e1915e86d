// Finished images keyed by everything that decides their pixels: the model's files and the way it
// computes (cache_identity.h), the prompt, seed, size, steps, guidance and max_sequence_length. The
// runner copies a hit into the output (its own text chunks added) instead of rendering it, and
// stores every image it renders. The pixels are kept as a PNG without text chunks. Torch-free.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "fluxbatch/io/cache_store.h"
#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::runtime {

class ImageCache {
 public:
  inline static const std::string kKind = "images-v1";

  // `identity`: model_files_identity + compute_identity.
  ImageCache(std::shared_ptr<io::CacheStore> store, std::string identity);

  std::string key(const job::RenderItem& item) const;
  // The PNG (no text chunks) of an earlier render of exactly this image, if the cache has it intact.
  std::optional<std::string> find(const job::RenderItem& item);
  void store(const job::RenderItem& item, const std::string& plain_png);
  io::CacheStore& store() { return *store_; }
  // How LoRAs are applied ("merged"; empty: side paths), part of the key of images with LoRAs.
  void set_lora_mode(std::string mode) { lora_mode_ = std::move(mode); }

 private:
  std::shared_ptr<io::CacheStore> store_;
  std::string identity_;
  std::string lora_mode_;
};

}  // namespace fluxbatch::runtime
