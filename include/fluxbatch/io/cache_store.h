// The on-disk cache behind --cache DIR: content-addressed entries that any number of fluxbatch
// processes may share. An entry lives at DIR/<kind>/<2 hex>/<SHA-256 of its key>, and its file holds
// "FBCACHE1", the key, the payload and the SHA-256 of all of that, so a torn, truncated or damaged
// file (a crash, a full disk, a bad copy) and a hash collision are both detected: such an entry is
// ignored and removed, never used. Entries are written to a temporary file and renamed into place,
// so a reader (this process or another) sees a whole entry or none; a process killed mid-write
// leaves a temporary file no lookup reads, removed by a later open once its writer is gone.
// The total size is bounded: past max_bytes the least recently used entries (file modification
// time, refreshed on every hit) are removed until 90% of the bound is left. Thread-safe. Torch-free.
#pragma once
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace fluxbatch::io {

struct CacheStats {
  int64_t hits = 0, misses = 0, stored = 0, corrupt = 0, evicted = 0;
  int64_t bytes = 0;    // entries on disk as last counted (all processes' entries)
  int64_t entries = 0;
};

class CacheStore {
 public:
  // Creates `dir` if needed (OutputError when that fails), removes temporary files of writers that
  // are gone, counts the entries and evicts down to the bound. max_bytes <= 0: InputError.
  CacheStore(std::string dir, int64_t max_bytes);

  const std::string& dir() const { return dir_; }
  int64_t max_bytes() const { return max_bytes_; }

  // The payload stored under (kind, key), if a complete and intact entry exists; a hit refreshes
  // its use time. `kind` names a subfolder ("images-v1", ...).
  std::optional<std::string> get(const std::string& kind, const std::string& key);
  // Stores the payload (replacing an entry under the same key). Best effort: false (and one warning
  // per store) when the disk refuses; the job goes on without it.
  bool put(const std::string& kind, const std::string& key, std::string_view payload);

  std::string path_for(const std::string& kind, const std::string& key) const;
  CacheStats stats() const;

 private:
  void count_and_evict(int64_t target_bytes);
  void remove_damaged(const std::string& path, const std::string& why);

  std::string dir_;
  int64_t max_bytes_;
  mutable std::mutex mutex_;
  CacheStats stats_;
  bool warned_write_ = false;
  bool warned_damage_ = false;
};

// The file format, public for tests: the bytes of an entry, and its payload when `file` is an intact
// entry for `key` (else nullopt with the reason in *why).
std::string cache_entry_bytes(const std::string& key, std::string_view payload);
std::optional<std::string> cache_entry_payload(std::string_view file, const std::string& key, std::string* why);

}  // namespace fluxbatch::io
