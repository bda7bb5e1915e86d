// The on-disk cache's guarantees: an entry is used only when whole and intact (checksum, key),
// eviction removes the least recently used first, a writer killed mid-write leaves nothing that a
// lookup uses, and two processes can share one directory.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>
#include <thread>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/cache_store.h"
#include "test_support.h"

namespace fs = std::filesystem;
using fluxbatch::io::CacheStore;
using fluxbatch::test::TempDir;

namespace {

std::string payload_for(int i, size_t size = 1000) {
  std::string p(size, '\0');
  for (size_t k = 0; k < size; ++k) p[k] = static_cast<char>((k * 131 + static_cast<size_t>(i) * 7) & 0xFF);
  return p;
}

std::vector<fs::path> temporaries(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;  // files come and go while a writer runs
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(".tmp-", 0) == 0) out.push_back(it->path());
  }
  return out;
}

void wait_a_little() { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }

}  // namespace

TEST_CASE("a stored entry comes back; a missing one is a miss", "[io][cache]") {
  TempDir dir;
  CacheStore store((dir / "cache").string(), 1 << 20);
  CHECK_FALSE(store.get("images-v1", "key a"));
  REQUIRE(store.put("images-v1", "key a", payload_for(1)));
  const auto got = store.get("images-v1", "key a");
  REQUIRE(got);
  CHECK(*got == payload_for(1));
  CHECK_FALSE(store.get("embeddings-v1", "key a"));  // kinds are separate
  const auto s = store.stats();
  CHECK(s.hits == 1);
  CHECK(s.misses == 2);
  CHECK(s.stored == 1);
  CHECK(s.entries == 1);
  // A second process (a new store) sees it.
  CacheStore other((dir / "cache").string(), 1 << 20);
  CHECK(other.stats().entries == 1);
  CHECK(other.get("images-v1", "key a") == payload_for(1));
  CHECK_THROWS_AS(CacheStore((dir / "x").string(), 0), fluxbatch::InputError);
}

TEST_CASE("damaged entries are ignored and removed: flipped byte, truncation, foreign file, collision", "[io][cache]") {
  TempDir dir;
  CacheStore store((dir / "cache").string(), 1 << 20);
  const auto damage = [&](const std::string& key, const std::function<void(std::string&)>& edit) {
    REQUIRE(store.put("images-v1", key, payload_for(2)));
    const fs::path path = store.path_for("images-v1", key);
    std::string bytes = fluxbatch::test::read_file(path);
    edit(bytes);
    fluxbatch::test::write_file(path, bytes);
    CHECK_FALSE(store.get("images-v1", key));
    CHECK_FALSE(fs::exists(path));  // removed, so the next run makes it again
  };
  damage("flipped", [](std::string& b) { b[b.size() / 2] ^= 0x10; });
  damage("truncated", [](std::string& b) { b.resize(b.size() - 100); });
  damage("empty", [](std::string& b) { b.clear(); });
  damage("foreign", [](std::string& b) { b.replace(0, 8, "GIF89a!!"); });
  // Another key's (intact) entry under this key's name: the key inside does not match.
  REQUIRE(store.put("images-v1", "mine", payload_for(3)));
  REQUIRE(store.put("images-v1", "theirs", payload_for(4)));
  fs::copy_file(store.path_for("images-v1", "theirs"), store.path_for("images-v1", "mine"),
                fs::copy_options::overwrite_existing);
  CHECK_FALSE(store.get("images-v1", "mine"));
  CHECK(store.stats().corrupt == 5);
  std::string why;
  CHECK_FALSE(fluxbatch::io::cache_entry_payload(fluxbatch::io::cache_entry_bytes("a", "x"), "b", &why));
  CHECK_THAT(why, Catch::Matchers::ContainsSubstring("another key"));
}

TEST_CASE("past the size bound the least recently used entries go first", "[io][cache]") {
  TempDir dir;
  const int64_t entry = static_cast<int64_t>(fluxbatch::io::cache_entry_bytes("key 0", payload_for(0)).size());
  CacheStore store((dir / "cache").string(), entry * 3 + entry / 2);  // room for three
  for (int i = 0; i < 3; ++i) {
    REQUIRE(store.put("images-v1", "key " + std::to_string(i), payload_for(i)));
    wait_a_little();
  }
  CHECK(store.get("images-v1", "key 0"));  // used again: now the most recent
  wait_a_little();
  REQUIRE(store.put("images-v1", "key 3", payload_for(3)));  // four: over the bound, so one goes
  CHECK(store.stats().evicted == 1);
  CHECK(fs::exists(store.path_for("images-v1", "key 0")));        // used again: kept
  CHECK_FALSE(fs::exists(store.path_for("images-v1", "key 1")));  // the least recently used
  CHECK(fs::exists(store.path_for("images-v1", "key 2")));
  CHECK(store.get("images-v1", "key 3") == payload_for(3));
  // Opening a store with a smaller bound evicts at once.
  CacheStore smaller((dir / "cache").string(), entry + entry / 2);
  CHECK(smaller.stats().entries == 1);
  CHECK(smaller.get("images-v1", "key 3"));  // the most recent one stays
}

TEST_CASE("a writer killed in the middle of a write leaves no entry that a lookup uses", "[io][cache]") {
  TempDir dir;
  const std::string cache = (dir / "cache").string();
  const std::string big = payload_for(9, size_t{48} << 20);
  CacheStore(cache, int64_t{1} << 30);  // the directory exists before the child starts
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    CacheStore store(cache, int64_t{1} << 30);
    store.put("images-v1", "big", big);
    _exit(0);
  }
  // Kill it as soon as its temporary file appears (SIGKILL: nothing of the child runs after).
  bool seen = false;
  for (int i = 0; i < 20000 && !seen; ++i) {
    seen = fs::exists(cache) && !temporaries(cache).empty();
    if (!seen) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  INFO("killed while its temporary file existed: " << seen);
  CHECK(seen);
  CacheStore store(cache, int64_t{1} << 30);  // a later run
  const auto got = store.get("images-v1", "big");
  // Either the write had finished (whole entry) or nothing is used; never a part of it.
  CHECK((!got || *got == big));
  CHECK(temporaries(cache).empty());  // the dead writer's temporary is gone
  if (!got) CHECK(store.stats().corrupt == 0);  // not even read: it never had the entry's name
}

TEST_CASE("two processes can fill and read one cache at the same time", "[io][cache]") {
  TempDir dir;
  const std::string cache = (dir / "cache").string();
  CacheStore(cache, int64_t{1} << 30);
  std::vector<pid_t> children;
  for (int c = 0; c < 2; ++c) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      CacheStore store(cache, int64_t{1} << 30);
      int bad = 0;
      for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 40; ++i) {
          const int k = (c == 0 ? i : 39 - i);  // opposite orders: they meet on the same keys
          const std::string key = "key " + std::to_string(k);
          const auto got = store.get("images-v1", key);
          if (got && *got != payload_for(k, 20000)) ++bad;
          if (!got && !store.put("images-v1", key, payload_for(k, 20000))) ++bad;
        }
      }
      _exit(bad == 0 && store.stats().corrupt == 0 ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (const pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CacheStore store(cache, int64_t{1} << 30);
  CHECK(store.stats().entries == 40);
  for (int k = 0; k < 40; ++k) CHECK(store.get("images-v1", "key " + std::to_string(k)) == payload_for(k, 20000));
  CHECK(temporaries(cache).empty());
}
