// Claims: how any number of fluxbatch processes rendering one job into one output directory split its
// images without a coordinator. Before a worker renders an image it creates the image's claim file
// exclusively (O_CREAT | O_EXCL: one creator wins, also on NFSv3+), holding who owns it (host, boot,
// pid namespace, pid, the process's start time, a random token). While the worker lives a thread
// renews the lease of every claim it holds (the file's mtime) every lease / 4. A claim is stale, and
// may be taken over, when its owner is known dead (same host, boot and pid namespace: the pid is gone
// or belongs to a younger process; same host, another boot) or, for owners elsewhere, when its lease
// ran out: no renewal for lease_s, judged on the file server's clock (each renewal also touches this
// worker's heartbeat file, whose mtime gives the server's time), so nodes' clocks need not agree.
// Taking over renames the stale file to a name of its own (one renamer wins), checks that it renamed
// the claim it judged, and creates a fresh claim. Torch-free, thread-safe.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace fluxbatch::io {

// Who holds a claim, as written in its file (one JSON line).
struct ClaimOwner {
  std::string host;      // gethostname()
  std::string boot_id;   // /proc/sys/kernel/random/boot_id: a reboot ends every process
  std::string pid_ns;    // the pid namespace ("pid:[4026531836]"): pids mean nothing across namespaces
  int64_t pid = 0;
  int64_t start_ticks = 0;  // /proc/<pid>/stat field 22: tells a reused pid from the owner
  std::string token;        // unique per ClaimStore: host, pid and random bits
  std::string worker;       // a label for people ("cuda:0", "slurm 812_3")
  std::string file;         // the image the claim is for (for people; the key is its hash)
  std::string started_at;   // UTC, when the claim was made
};

// This process's identity (token and worker empty).
ClaimOwner this_process();
// "host:pid" / "host:pid (worker)" for messages.
std::string describe(const ClaimOwner& owner);

enum class ClaimResult {
  kClaimed,    // the claim is ours (it was free)
  kTakenOver,  // the claim is ours (its owner was dead or its lease had run out)
  kHeld,       // a live worker holds it
};

struct ClaimStoreOptions {
  double lease_s = 60.0;  // a claim not renewed for this long is stale (owners on other hosts)
  std::string worker;     // ClaimOwner::worker
  bool renew_thread = true;  // tests turn the background renewal off and call renew() themselves
};

class ClaimStore {
 public:
  // Claims live in `dir` (created with its parents; OutputError when that fails).
  ClaimStore(std::string dir, ClaimStoreOptions options);
  // Stops the renewal thread; claims still held are released; the directory goes if nothing is left.
  ~ClaimStore();
  ClaimStore(const ClaimStore&) = delete;
  ClaimStore& operator=(const ClaimStore&) = delete;

  // Claims `key` (any string: an output file name) for `label`. OutputError when the directory
  // cannot be written.
  ClaimResult claim(const std::string& key, const std::string& label);
  // True while this store still holds `key` (its file exists and carries our token): a worker
  // checks before recording an image, in case a stall outlived its lease and another took over.
  bool holds(const std::string& key) const;
  // Removes our claim of `key` (only if the file is still ours). Never throws.
  void release(const std::string& key);
  // Releases every claim held (a worker that stops early, or gives up after its grace time).
  void release_all();
  // Renews the lease of every claim held and this worker's heartbeat (the renewal thread calls it).
  void renew();

  // Another worker holds `key` and is alive (or its lease has not run out).
  bool live_claim(const std::string& key) const;
  // The owner recorded in `key`'s claim file, if one exists and is readable.
  std::optional<ClaimOwner> owner_of(const std::string& key) const;

  const ClaimOwner& self() const { return self_; }
  const std::string& dir() const { return dir_; }
  int64_t held() const;
  int64_t taken_over() const;  // claims taken over from dead or expired owners so far
  double lease_s() const { return options_.lease_s; }

  // The claim file of `key` (relative names are hashed: any key maps to one flat file name).
  std::string path_for(const std::string& key) const;

 private:
  enum class Verdict { kLive, kStale, kGone };
  Verdict judge(const std::string& path, std::string* token) const;
  // Removes the stale claim at `path` whose owner's token was `judged`; *moved: the owner removed.
  enum class Aside { kRemoved, kPutBack, kGone };
  Aside remove_stale(const std::string& path, const std::string& judged, std::optional<ClaimOwner>* moved);
  bool create(const std::string& path, const std::string& key, const std::string& label);
  double server_now() const;  // seconds since the epoch on the file server's clock (estimated)
  void touch_heartbeat();
  void renew_loop();

  std::string dir_;
  ClaimStoreOptions options_;
  ClaimOwner self_;
  std::string heartbeat_;
  mutable std::mutex mutex_;
  std::map<std::string, std::string> held_;  // key -> claim file path
  int64_t taken_over_ = 0;
  double clock_offset_s_ = 0.0;  // server time - local time, from the last heartbeat
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// Starting time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22), or -1 when
// no such process exists (or /proc cannot tell).
int64_t process_start_ticks(pid_t pid);

}  // namespace fluxbatch::io
