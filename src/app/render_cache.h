// render's cache (--cache DIR, --cache-max, --no-cache, or the job file's "cache"): one directory
// holding prompt embeddings and finished images, shared by every job and process that names it.
#pragma once
#include <CLI/CLI.hpp>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <optional>
#include <string>

#include "fluxbatch/io/cache_store.h"
#include "fluxbatch/runtime/cache/image_cache.h"
#include "fluxbatch/runtime/cache/prompt_cache.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::app {

inline constexpr const char* kDefaultCacheMax = "20G";

struct CacheOptions {
  std::string dir;                     // --cache; empty: the job's "cache", else none
  std::string max = kDefaultCacheMax;  // --cache-max
  bool off = false;                    // --no-cache: ignore the job's "cache"
};
void add_cache_options(CLI::App& command, CacheOptions& options);

struct RenderCaches {
  std::shared_ptr<io::CacheStore> store;  // null: no cache
  std::unique_ptr<runtime::ImageCache> images;
  std::shared_ptr<runtime::PromptCache> prompts;
};

// The cache the options and the job ask for, keyed for this model (its files' fingerprints) and this
// way of computing (`mode`: kernels and compute mode, compute_mode_identity); nothing when none is asked
// for. InputError for a bad --cache-max.
RenderCaches open_caches(const CacheOptions& options, const std::optional<std::string>& job_cache,
                         const runtime::ModelFiles& model, c10::Device device, c10::ScalarType dtype,
                         bool quantize_nf4, const std::string& mode);

}  // namespace fluxbatch::app
