#include "fluxbatch/io/cache_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/sha256.h"
#include "fluxbatch/io/atomic_file.h"

namespace fluxbatch::io {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kMagic = "FBCACHE1";
constexpr size_t kDigest = 32;
constexpr const char* kTempPrefix = ".tmp-";
// A temporary file this old is left over whoever wrote it (a writer on another host, say).
constexpr auto kStaleTemp = std::chrono::hours(24);

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(std::string_view in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(in[at + i])) << (8 * i);
  return v;
}

std::optional<std::string> read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return bytes.str();
}

// The pid in ".tmp-<pid>-..." when that process no longer exists on this host.
bool writer_gone(const std::string& name) {
  const long pid = std::strtol(name.c_str() + std::strlen(kTempPrefix), nullptr, 10);
  return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

struct Entry {
  fs::path path;
  int64_t bytes = 0;
  fs::file_time_type used;
};

}  // namespace

std::string cache_entry_bytes(const std::string& key, std::string_view payload) {
  std::string out(kMagic);
  out.reserve(kMagic.size() + 4 + key.size() + 8 + payload.size() + kDigest);
  put_le(out, key.size(), 4);
  out += key;
  put_le(out, payload.size(), 8);
  out.append(payload.data(), payload.size());
  const auto digest = sha256(out);
  out.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  return out;
}

std::optional<std::string> cache_entry_payload(std::string_view file, const std::string& key, std::string* why) {
  const auto fail = [&](const char* reason) -> std::optional<std::string> {
    if (why != nullptr) *why = reason;
    return std::nullopt;
  };
  if (file.size() < kMagic.size() + 4 + 8 + kDigest || file.substr(0, kMagic.size()) != kMagic) {
    return fail("not a cache entry, or truncated");
  }
  const uint64_t key_size = get_le(file, kMagic.size(), 4);
  const size_t payload_at = kMagic.size() + 4 + key_size + 8;
  if (key_size > file.size() || payload_at + kDigest > file.size()) return fail("truncated");
  const uint64_t payload_size = get_le(file, kMagic.size() + 4 + key_size, 8);
  if (payload_size != file.size() - payload_at - kDigest) return fail("truncated or padded");
  const auto digest = sha256(file.substr(0, file.size() - kDigest));
  if (std::memcmp(digest.data(), file.data() + file.size() - kDigest, kDigest) != 0) return fail("checksum mismatch");
  if (file.substr(kMagic.size() + 4, key_size) != key) return fail("another key with the same hash");
  return std::string(file.substr(payload_at, payload_size));
}

CacheStore::CacheStore(std::string dir, int64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  if (max_bytes_ <= 0) throw InputError("cache size must be positive, got " + std::to_string(max_bytes_));
  ensure_directory(dir_);
  count_and_evict(max_bytes_);
}

std::string CacheStore::path_for(const std::string& kind, const std::string& key) const {
  const std::string hash = sha256_hex(key);
  return (fs::path(dir_) / kind / hash.substr(0, 2) / hash).string();
}

// Walks every entry (all processes' entries count towards the bound), removes temporary files whose
// writer is gone, and when the total passes `target_bytes` removes the least recently used entries
// until 90% of max_bytes is left.
void CacheStore::count_and_evict(int64_t target_bytes) {
  std::vector<Entry> entries;
  int64_t total = 0;
  std::error_code ec;
  const auto now = fs::file_time_type::clock::now();
  for (fs::recursive_directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code stat_ec;
    if (!it->is_regular_file(stat_ec)) continue;
    const std::string name = it->path().filename().string();
    const auto used = it->last_write_time(stat_ec);
    if (stat_ec) continue;
    if (name.rfind(kTempPrefix, 0) == 0) {
      if (writer_gone(name) || now - used > kStaleTemp) fs::remove(it->path(), stat_ec);
      continue;
    }
    if (name.size() != 64) continue;  // not ours (a README someone put there)
    const auto bytes = static_cast<int64_t>(it->file_size(stat_ec));
    if (stat_ec) continue;
    entries.push_back({it->path(), bytes, used});
    total += bytes;
  }
  int64_t evicted = 0;
  if (total > target_bytes) {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.used != b.used ? a.used < b.used : a.path < b.path;
    });
    const int64_t keep = max_bytes_ / 10 * 9;
    for (const Entry& e : entries) {
      if (total <= keep) break;
      std::error_code remove_ec;
      if (fs::remove(e.path, remove_ec) || !fs::exists(e.path, remove_ec)) {  // gone: maybe another process's eviction
        total -= e.bytes;
        ++evicted;
      }
    }
    if (evicted > 0) {
      log::info("cache: evicted " + std::to_string(evicted) + " least recently used entr" +
                (evicted == 1 ? "y" : "ies") + " to stay within " +
                (max_bytes_ >= (int64_t{1} << 20) ? std::to_string(max_bytes_ >> 20) + " MiB"
                                                  : std::to_string(max_bytes_ >> 10) + " KiB") +
                " (" + dir_ + ")");
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.bytes = total;
  stats_.entries = static_cast<int64_t>(entries.size()) - evicted;
  stats_.evicted += evicted;
}

void CacheStore::remove_damaged(const std::string& path, const std::string& why) {
  std::error_code ec;
  fs::remove(path, ec);
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.corrupt;
    first = !warned_damage_;
    warned_damage_ = true;
  }
  const std::string message = "cache: ignored and removed a damaged entry " + path + " (" + why + ")";
  if (first) {
    log::warn(message + "; it is made again, and further ones are counted in the summary");
  } else {
    log::debug(message);
  }
}

std::optional<std::string> CacheStore::get(const std::string& kind, const std::string& key) {
  const std::string path = path_for(kind, key);
  const std::optional<std::string> file = read_whole(path);
  if (!file) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.misses;
    return std::nullopt;
  }
  std::string why;
  std::optional<std::string> payload = cache_entry_payload(*file, key, &why);
  if (!payload) {
    remove_damaged(path, why);
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.misses;
    return std::nullopt;
  }
  // Recently used: eviction goes by this time. (Another process may have evicted it meanwhile.)
  ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.hits;
  return payload;
}

bool CacheStore::put(const std::string& kind, const std::string& key, std::string_view payload) {
  static std::atomic<unsigned> counter{0};
  const fs::path target = path_for(kind, key);
  const std::string bytes = cache_entry_bytes(key, payload);
  const fs::path temp = target.parent_path() / (std::string(kTempPrefix) + std::to_string(::getpid()) + "-" +
                                                std::to_string(counter.fetch_add(1)) + "-" +
                                                target.filename().string());
  std::string error;
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  // No fsync: an entry torn by a power loss fails its checksum and is made again.
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    error = std::strerror(errno);
  } else {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        error = std::strerror(errno);
        break;
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd) != 0 && error.empty()) error = std::strerror(errno);
    if (error.empty() && ::rename(temp.c_str(), target.c_str()) != 0) error = std::strerror(errno);
    if (!error.empty()) ::unlink(temp.c_str());
  }
  bool over = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error.empty()) {
      if (!warned_write_) log::warn("cache: cannot store an entry in " + dir_ + " (" + error + "); going on without");
      warned_write_ = true;
      return false;
    }
    ++stats_.stored;
    ++stats_.entries;
    stats_.bytes += static_cast<int64_t>(bytes.size());
    over = stats_.bytes > max_bytes_;
  }
  if (over) count_and_evict(max_bytes_);
  return true;
}

CacheStats CacheStore::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace fluxbatch::io
