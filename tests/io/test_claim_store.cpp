// Claim files: one owner per key among threads and processes, takeover from dead owners at once and
// from owners elsewhere after their lease, renewal, and the checks a worker makes before recording.
#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fluxbatch/io/claim_store.h"
#include "test_support.h"

namespace fs = std::filesystem;
using fluxbatch::io::ClaimResult;
using fluxbatch::io::ClaimStore;
using fluxbatch::io::ClaimStoreOptions;

namespace {

ClaimStoreOptions quiet(double lease_s = 60.0, const std::string& worker = "") {
  ClaimStoreOptions o;
  o.lease_s = lease_s;
  o.worker = worker;
  o.renew_thread = false;
  return o;
}

// A claim file as another worker would have written it, with its mtime `age_s` in the past.
void plant_claim(const ClaimStore& store, const std::string& key, const std::string& host, int64_t pid,
                 int64_t start_ticks, double age_s) {
  const fluxbatch::io::ClaimOwner me = fluxbatch::io::this_process();
  const std::string path = store.path_for(key);
  std::ofstream(path) << "{\"file\":\"" << key << "\",\"host\":\"" << host << "\",\"pid\":" << pid
                      << ",\"start_ticks\":" << start_ticks << ",\"boot_id\":\"" << me.boot_id << "\",\"pid_ns\":\""
                      << me.pid_ns << "\",\"worker\":\"w\",\"token\":\"planted-" << pid << "\",\"started_at\":\"\"}\n";
  const std::time_t then = std::time(nullptr) - static_cast<std::time_t>(age_s);
  struct timespec times[2] = {{then, 0}, {then, 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

// A pid that no longer exists: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

double mtime(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<double>(st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(st.st_mtim.tv_nsec);
}

}  // namespace

TEST_CASE("a claim has one owner until it is released", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  ClaimStore a((dir / "claims").string(), quiet(60.0, "a"));
  ClaimStore b((dir / "claims").string(), quiet(60.0, "b"));
  CHECK(a.claim("00001-fox.png", "00001-fox.png") == ClaimResult::kClaimed);
  CHECK(b.claim("00001-fox.png", "00001-fox.png") == ClaimResult::kHeld);  // same host, owner alive
  CHECK(a.holds("00001-fox.png"));
  CHECK_FALSE(b.holds("00001-fox.png"));
  CHECK(b.live_claim("00001-fox.png"));
  const auto owner = b.owner_of("00001-fox.png");
  REQUIRE(owner);
  CHECK(owner->worker == "a");
  CHECK(owner->pid == ::getpid());
  CHECK(owner->file == "00001-fox.png");
  CHECK(a.held() == 1);

  b.release("00001-fox.png");  // not b's: nothing happens
  CHECK(a.holds("00001-fox.png"));
  a.release("00001-fox.png");
  CHECK_FALSE(fs::exists(a.path_for("00001-fox.png")));
  CHECK(b.claim("00001-fox.png", "00001-fox.png") == ClaimResult::kClaimed);
  CHECK(a.taken_over() == 0);
  CHECK(b.taken_over() == 0);
  // Keys with slashes map to flat files inside the directory.
  CHECK(fs::path(a.path_for("sub/dir/x.png")).parent_path() == fs::path(a.dir()));
}

TEST_CASE("the claim of a dead process on this host is taken over at once", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  ClaimStore store((dir / "claims").string(), quiet(3600.0));
  const fluxbatch::io::ClaimOwner me = fluxbatch::io::this_process();
  plant_claim(store, "a.png", me.host, dead_pid(), 12345, 0.0);
  CHECK(store.claim("a.png", "a.png") == ClaimResult::kTakenOver);
  CHECK(store.holds("a.png"));
  CHECK(store.taken_over() == 1);
  // A live pid whose start time differs is another process that reused the number: dead owner too.
  plant_claim(store, "b.png", me.host, ::getpid(), me.start_ticks + 1, 0.0);
  CHECK(store.claim("b.png", "b.png") == ClaimResult::kTakenOver);
  // Alive with the right start time: held, however old the file.
  plant_claim(store, "c.png", me.host, ::getpid(), me.start_ticks, 7200.0);
  CHECK(store.claim("c.png", "c.png") == ClaimResult::kHeld);
  CHECK(store.taken_over() == 2);
}

TEST_CASE("a claim from another host is taken over once its lease ran out", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  ClaimStore store((dir / "claims").string(), quiet(30.0));
  plant_claim(store, "fresh.png", "node-17", 4242, 1, 5.0);
  plant_claim(store, "expired.png", "node-17", 4242, 1, 45.0);
  CHECK(store.claim("fresh.png", "fresh.png") == ClaimResult::kHeld);
  CHECK(store.claim("expired.png", "expired.png") == ClaimResult::kTakenOver);
  // A claim file its writer never finished (empty): judged by its age alone.
  std::ofstream(store.path_for("torn.png")).close();
  CHECK(store.claim("torn.png", "torn.png") == ClaimResult::kHeld);
  plant_claim(store, "torn2.png", "node-17", 1, 1, 45.0);
  std::ofstream(store.path_for("torn2.png"), std::ios::trunc).close();
  const std::time_t then = std::time(nullptr) - 45;
  struct timespec times[2] = {{then, 0}, {then, 0}};
  REQUIRE(::utimensat(AT_FDCWD, store.path_for("torn2.png").c_str(), times, 0) == 0);
  CHECK(store.claim("torn2.png", "torn2.png") == ClaimResult::kTakenOver);
}

TEST_CASE("renewing keeps a claim's lease; a claim taken over is no longer held", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  ClaimStore a((dir / "claims").string(), quiet(30.0));
  REQUIRE(a.claim("x.png", "x.png") == ClaimResult::kClaimed);
  const std::string path = a.path_for("x.png");
  const std::time_t then = std::time(nullptr) - 100;
  struct timespec times[2] = {{then, 0}, {then, 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
  a.renew();
  CHECK(mtime(path) > static_cast<double>(std::time(nullptr)) - 5.0);

  // A stalled owner (here: a claim rewritten as if it came from another host and expired) loses it.
  ClaimStore b((dir / "claims").string(), quiet(30.0));  // started first: it would remove the stale claim
  plant_claim(a, "y.png", "node-3", 1, 1, 100.0);
  CHECK(b.claim("y.png", "y.png") == ClaimResult::kTakenOver);
  REQUIRE(a.claim("z.png", "z.png") == ClaimResult::kClaimed);
  fs::remove(a.path_for("z.png"));
  CHECK(b.claim("z.png", "z.png") == ClaimResult::kClaimed);
  CHECK_FALSE(a.holds("z.png"));  // what a worker checks before writing an image's line
  a.release("z.png");             // must not remove b's claim
  CHECK(b.holds("z.png"));
}

TEST_CASE("the background thread renews the lease while the worker lives", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  ClaimStoreOptions o;
  o.lease_s = 1.0;  // renewed every 0.25 s
  ClaimStore a((dir / "claims").string(), o);
  REQUIRE(a.claim("x.png", "x.png") == ClaimResult::kClaimed);
  const std::time_t then = std::time(nullptr) - 100;
  struct timespec times[2] = {{then, 0}, {then, 0}};
  REQUIRE(::utimensat(AT_FDCWD, a.path_for("x.png").c_str(), times, 0) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  CHECK(mtime(a.path_for("x.png")) > static_cast<double>(std::time(nullptr)) - 5.0);
}

TEST_CASE("claims leave the directory empty, and remove it, when the last worker goes", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  const std::string claims = (dir / "claims").string();
  {
    ClaimStore a(claims, quiet());
    REQUIRE(a.claim("x.png", "x.png") == ClaimResult::kClaimed);
    ClaimStore b(claims, quiet());
    REQUIRE(b.claim("y.png", "y.png") == ClaimResult::kClaimed);
  }
  CHECK_FALSE(fs::exists(claims));
}

TEST_CASE("a worker starting while another one ends and removes the folder still gets its store", "[io][claims]") {
  // The last worker to go removes the claims folder and .fluxbatch (both empty); one starting at that
  // moment may find the folder gone between creating it and writing its first file. Two threads start and
  // end stores on one nested folder as fast as they can: every start must succeed.
  // Each store also claims a key of its own (a file in the folder), and each thread then removes
  // .fluxbatch if empty, as the job runner does.
  fluxbatch::test::TempDir dir;
  const fs::path state = dir / ".fluxbatch";
  const std::string claims = (state / "claims").string();
  std::atomic<int> failures{0};
  std::atomic<int> claimed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3000; ++i) {
        try {
          ClaimStore store(claims, quiet());
          const std::string key = std::to_string(t) + "-" + std::to_string(i) + ".png";
          if (store.claim(key, key) == ClaimResult::kClaimed) ++claimed;
        } catch (const std::exception&) {
          ++failures;
        }
        ::rmdir(state.c_str());
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures.load() == 0);
  CHECK(claimed.load() == 6000);
  CHECK_FALSE(fs::exists(state));  // and the last one to go still removed both folders
}

TEST_CASE("a worker starting removes the claims dead workers left, and only those", "[io][claims]") {
  // A worker killed after writing an image's manifest line, before releasing its claim, leaves a claim
  // no later run takes (the image is done): the next worker to start removes it, so the claims folder
  // (and .fluxbatch) can go with the last worker.
  fluxbatch::test::TempDir dir;
  const std::string claims = (dir / "claims").string();
  const fluxbatch::io::ClaimOwner me = fluxbatch::io::this_process();
  std::string dead_path, live_path, remote_path;
  {
    ClaimStore first(claims, quiet(30.0));
    plant_claim(first, "done.png", me.host, dead_pid(), 12345, 0.0);
    plant_claim(first, "mine.png", me.host, ::getpid(), me.start_ticks, 0.0);  // a live worker's
    plant_claim(first, "remote.png", "node-17", 4242, 1, 5.0);                 // lease still running
    dead_path = first.path_for("done.png");
    live_path = first.path_for("mine.png");
    remote_path = first.path_for("remote.png");
  }
  ClaimStore next(claims, quiet(30.0));
  CHECK_FALSE(fs::exists(dead_path));
  CHECK(fs::exists(live_path));
  CHECK(fs::exists(remote_path));
  CHECK(next.taken_over() == 0);  // removed, not taken: nobody renders done.png again for it
  CHECK(next.claim("done.png", "done.png") == ClaimResult::kClaimed);
  CHECK(next.claim("mine.png", "mine.png") == ClaimResult::kHeld);
  for (const auto& entry : fs::directory_iterator(claims)) {
    CHECK(entry.path().filename().string().find(".stale-") == std::string::npos);
  }
}

TEST_CASE("threads of many workers claim every key exactly once", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  constexpr int kKeys = 300;
  constexpr int kWorkers = 6;
  std::vector<std::vector<int>> got(kWorkers);
  std::vector<std::thread> threads;
  std::atomic<int> through{0};
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      ClaimStore store((dir / "claims").string(), quiet());
      for (int k = 0; k < kKeys; ++k) {
        const std::string key = "img-" + std::to_string(k) + ".png";
        if (store.claim(key, key) == ClaimResult::kClaimed) got[w].push_back(k);
      }
      // Hold them until everyone is through, so no released key is claimed a second time.
      ++through;
      while (through.load() < kWorkers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
  }
  for (auto& t : threads) t.join();
  std::map<int, int> owners;
  for (const auto& keys : got) {
    for (int k : keys) ++owners[k];
  }
  CHECK(owners.size() == static_cast<size_t>(kKeys));
  for (const auto& [k, n] : owners) CHECK(n == 1);
}

TEST_CASE("processes racing for the same keys each win a disjoint set", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  constexpr int kKeys = 200;
  constexpr int kProcesses = 6;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        ClaimStore store((dir / "claims").string(), quiet());
        std::ofstream won(dir / ("won-" + std::to_string(p)));
        for (int k = 0; k < kKeys; ++k) {
          const std::string key = std::to_string(k);
          if (store.claim(key, key) == ClaimResult::kClaimed) won << k << "\n";
        }
        won.close();
        std::ofstream(dir / ("through-" + std::to_string(p))).close();
        // Claims stay until every process is through.
        for (int waited = 0; waited < 30000; ++waited) {
          int n = 0;
          for (int q = 0; q < kProcesses; ++q) n += fs::exists(dir / ("through-" + std::to_string(q))) ? 1 : 0;
          if (n == kProcesses) break;
          ::usleep(1000);
        }
      } catch (...) {
        code = 1;
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  std::map<int, int> owners;
  for (int p = 0; p < kProcesses; ++p) {
    std::ifstream in(dir / ("won-" + std::to_string(p)));
    for (int k; in >> k;) ++owners[k];
  }
  CHECK(owners.size() == static_cast<size_t>(kKeys));
  for (const auto& [k, n] : owners) CHECK(n == 1);
}
