#include "render_cache.h"

#include <chrono>
#include <cstdio>

#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/cache/cache_identity.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::app {

void add_cache_options(CLI::App& command, CacheOptions& o) {
  const std::string group = "Cache";
  command
      .add_option("--cache", o.dir,
                  "Cache directory for prompt embeddings (a prompt encoded by an earlier job is not encoded again; "
                  "when every prompt is there, T5 is not even loaded) and finished images (an image any earlier job "
                  "rendered with the same model, prompt, seed, size, steps, guidance, sequence length, device and "
                  "dtype is copied instead of rendered). Several jobs and processes may share one. Overrides the "
                  "job's \"cache\" (default: none)")
      ->type_name("DIR")
      ->group(group);
  command
      .add_option("--cache-max", o.max,
                  std::string("Most bytes the cache may hold; past it the least recently used entries are removed "
                              "(default ") +
                      kDefaultCacheMax + ")")
      ->type_name("SIZE")
      ->group(group);
  command.add_flag("--no-cache", o.off, "Use no cache, even if the job names one")->group(group);
}

RenderCaches open_caches(const CacheOptions& o, const std::optional<std::string>& job_cache,
                         const runtime::ModelFiles& model, c10::Device device, c10::ScalarType dtype,
                         bool quantize_nf4, const std::string& mode) {
  RenderCaches out;
  const int64_t max = runtime::parse_byte_size(o.max, "--cache-max");
  const std::string dir = o.off ? std::string() : !o.dir.empty() ? o.dir : job_cache.value_or("");
  if (dir.empty()) return out;
  const auto start = std::chrono::steady_clock::now();
  out.store = std::make_shared<io::CacheStore>(dir, max);
  const std::string compute = runtime::compute_identity(device, dtype, quantize_nf4, mode);
  out.prompts = std::make_shared<runtime::PromptCache>(out.store, runtime::text_encoders_identity(model) + "\n" + compute);
  out.images = std::make_unique<runtime::ImageCache>(out.store, runtime::model_files_identity(model) + "\n" + compute);
  const io::CacheStats s = out.store->stats();
  char took[32];
  std::snprintf(took, sizeof took, "%.2f s",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  log::info("cache: " + dir + " (" + std::to_string(s.entries) + " entries, " + runtime::format_bytes(s.bytes) +
            " of at most " + runtime::format_bytes(max) + "; model fingerprinted in " + took + ")");
  return out;
}

}  // namespace fluxbatch::app
