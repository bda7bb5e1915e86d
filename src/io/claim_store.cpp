// Claim files: exclusive creation, leases renewed by touching, takeover by rename.
#include "fluxbatch/io/claim_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/sha256.h"

namespace fluxbatch::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_small(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double local_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double mtime_of(const struct stat& st) {
  return static_cast<double>(st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(st.st_mtim.tv_nsec);
}

std::string owner_line(const ClaimOwner& o) {
  const json j = {{"file", o.file},     {"host", o.host},       {"pid", o.pid},
                  {"start_ticks", o.start_ticks}, {"boot_id", o.boot_id}, {"pid_ns", o.pid_ns},
                  {"worker", o.worker}, {"token", o.token},     {"started_at", o.started_at}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

std::optional<ClaimOwner> parse_owner(const std::string& text) {
  if (text.empty() || text.back() != '\n') return std::nullopt;  // being written, or torn
  try {
    const json j = json::parse(text);
    ClaimOwner o;
    o.file = j.value("file", "");
    o.host = j.at("host").get<std::string>();
    o.pid = j.at("pid").get<int64_t>();
    o.start_ticks = j.value("start_ticks", int64_t{-1});
    o.boot_id = j.value("boot_id", "");
    o.pid_ns = j.value("pid_ns", "");
    o.worker = j.value("worker", "");
    o.token = j.at("token").get<std::string>();
    o.started_at = j.value("started_at", "");
    return o;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw OutputError("claims: " + what + " " + path + ": " + std::strerror(err));
}

std::string random_hex(size_t bytes) {
  std::random_device device;
  std::string out;
  static const char* digits = "0123456789abcdef";
  for (size_t i = 0; i < bytes; ++i) {
    const unsigned v = device() & 0xFFu;
    out += digits[v >> 4];
    out += digits[v & 15];
  }
  return out;
}

}  // namespace

int64_t process_start_ticks(pid_t pid) {
  const std::string text = read_small("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return -1;
  // After "pid (comm)" come field 3 (state) onwards; starttime is field 22.
  std::istringstream rest(text.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(rest >> field)) return -1;
  }
  try {
    return std::stoll(field);
  } catch (const std::exception&) {
    return -1;
  }
}

ClaimOwner this_process() {
  ClaimOwner o;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  o.host = host;
  o.boot_id = trimmed(read_small("/proc/sys/kernel/random/boot_id"));
  char ns[128] = {};
  const ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  if (n > 0) o.pid_ns.assign(ns, static_cast<size_t>(n));
  o.pid = ::getpid();
  o.start_ticks = process_start_ticks(::getpid());
  return o;
}

std::string describe(const ClaimOwner& o) {
  std::string s = o.host + ":" + std::to_string(o.pid);
  if (!o.worker.empty()) s += " (" + o.worker + ")";
  return s;
}

ClaimStore::ClaimStore(std::string dir, ClaimStoreOptions options) : dir_(std::move(dir)), options_(std::move(options)) {
  if (!(options_.lease_s > 0.0)) throw InputError("claims: the lease must be positive");
  self_ = this_process();
  self_.worker = options_.worker;
  self_.token = self_.host + "-" + std::to_string(self_.pid) + "-" + random_hex(8);
  heartbeat_ = (fs::path(dir_) / (".heartbeat-" + self_.token)).string();
  // The folder, then our heartbeat in it: who we are, like a claim (a worker that finds it after we died
  // judges it the same way). The last worker to go removes the folder and its parent when they are empty
  // (~ClaimStore, the job runner), which can happen between our mkdir and our first file; once the
  // heartbeat is there, the folder stays. So a folder gone in between is made again.
  std::error_code ec;
  std::string why;
  bool written = false;
  for (int attempt = 0; attempt < 100 && !written; ++attempt) {
    fs::create_directories(dir_, ec);
    if (ec) {
      why = ec.message();
      continue;
    }
    std::ofstream heartbeat(heartbeat_);
    if (!heartbeat) {
      why = std::strerror(errno);
      continue;
    }
    ClaimOwner owner = self_;
    owner.started_at = utc_now();
    heartbeat << owner_line(owner);
    heartbeat.close();
    written = !heartbeat.fail();
    if (!written) why = "cannot write " + heartbeat_;
  }
  if (!written) throw OutputError("cannot create the claims directory " + dir_ + ": " + why);
  touch_heartbeat();
  // Leftovers of workers gone (kill -9): their heartbeats, claims moved aside by a takeover that was
  // itself cut short, and their claims (a worker killed after writing an image's manifest line but
  // before releasing its claim leaves a claim no later run would take: the image is done). Claims of
  // unfinished images removed here are simply claimed afresh.
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::string token;
    if (name.size() > 6 && name.compare(name.size() - 6, 6, ".claim") == 0) {
      std::optional<ClaimOwner> moved;
      if (judge(it->path().string(), &token) == Verdict::kStale &&
          remove_stale(it->path().string(), token, &moved) == Aside::kRemoved && moved) {
        log::debug("claims: removed the claim of " + describe(*moved) + " for " + moved->file + " (dead or lease expired)");
      }
      continue;
    }
    const bool gone_heartbeat = name.rfind(".heartbeat-", 0) == 0 && it->path() != fs::path(heartbeat_) &&
                                judge(it->path().string(), &token) == Verdict::kStale;
    struct stat st {};
    const bool old_aside = name.find(".stale-") != std::string::npos && ::stat(it->path().c_str(), &st) == 0 &&
                           server_now() - mtime_of(st) > options_.lease_s;
    if (gone_heartbeat || old_aside) {
      std::error_code remove_ec;
      fs::remove(it->path(), remove_ec);
    }
  }
  if (options_.renew_thread) thread_ = std::thread([this] { renew_loop(); });
}

ClaimStore::~ClaimStore() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  release_all();
  ::unlink(heartbeat_.c_str());
  ::rmdir(dir_.c_str());  // fails while other workers' claims or heartbeats are there: that is fine
}

std::string ClaimStore::path_for(const std::string& key) const {
  return (fs::path(dir_) / (sha256_hex(key).substr(0, 32) + ".claim")).string();
}

double ClaimStore::server_now() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return local_now() + clock_offset_s_;
}

void ClaimStore::touch_heartbeat() {
  int fd = ::open(heartbeat_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ENOENT) {  // the directory was removed (the last other worker left): make it again
    std::error_code ec;
    fs::create_directories(dir_, ec);
    fd = ::open(heartbeat_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  }
  if (fd < 0) return;  // the clock estimate stays as it was
  ::futimens(fd, nullptr);  // the server's "now" (NFS sets it on the server)
  struct stat st {};
  const bool ok = ::fstat(fd, &st) == 0;
  ::close(fd);
  if (!ok) return;
  std::lock_guard<std::mutex> lock(mutex_);
  clock_offset_s_ = mtime_of(st) - local_now();
}

bool ClaimStore::create(const std::string& path, const std::string& key, const std::string& label) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == EEXIST) return false;
      if (errno == ENOENT && attempt == 0) {  // the directory went away (removed by hand): make it again
        std::error_code ec;
        fs::create_directories(dir_, ec);
        continue;
      }
      fail("cannot create", path, errno);
    }
    ClaimOwner owner = self_;
    owner.file = label;
    owner.started_at = utc_now();
    const std::string line = owner_line(owner);
    size_t done = 0;
    while (done < line.size()) {
      const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(path.c_str());
        fail("cannot write", path, err);
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    std::lock_guard<std::mutex> lock(mutex_);
    held_[key] = path;
    return true;
  }
  return false;
}

ClaimStore::Verdict ClaimStore::judge(const std::string& path, std::string* token) const {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Verdict::kGone;
  const std::optional<ClaimOwner> owner = parse_owner(read_small(path));
  token->clear();
  if (owner) {
    *token = owner->token;
    if (owner->token == self_.token) return Verdict::kLive;
    if (owner->host == self_.host && !owner->boot_id.empty() && !self_.boot_id.empty()) {
      if (owner->boot_id != self_.boot_id) return Verdict::kStale;  // the host rebooted since
      if (!owner->pid_ns.empty() && owner->pid_ns == self_.pid_ns) {
        const int64_t ticks = process_start_ticks(static_cast<pid_t>(owner->pid));
        return ticks < 0 || ticks != owner->start_ticks ? Verdict::kStale : Verdict::kLive;
      }
    }
  }
  // Elsewhere, or a claim file still being written (or torn by a crash): the lease decides.
  return server_now() - mtime_of(st) > options_.lease_s ? Verdict::kStale : Verdict::kLive;
}

ClaimStore::Aside ClaimStore::remove_stale(const std::string& path, const std::string& judged,
                                          std::optional<ClaimOwner>* moved) {
  // Moved aside under a name of our own first: of several workers doing this, one succeeds.
  const std::string aside = path + ".stale-" + self_.token;
  if (::rename(path.c_str(), aside.c_str()) != 0) {
    if (errno == ENOENT) return Aside::kGone;
    fail("cannot take over", path, errno);
  }
  *moved = parse_owner(read_small(aside));
  const std::string moved_token = *moved ? (*moved)->token : "";
  if (moved_token != judged) {
    // Between judging and renaming, another worker took the stale claim over and made it anew:
    // that claim is live. Put it back (unless yet another claim appeared there since).
    if (::link(aside.c_str(), path.c_str()) != 0 && errno != EEXIST) {
      log::warn("claims: could not put back the claim " + path + ": " + std::strerror(errno));
    }
    ::unlink(aside.c_str());
    return Aside::kPutBack;
  }
  ::unlink(aside.c_str());
  return Aside::kRemoved;
}

ClaimResult ClaimStore::claim(const std::string& key, const std::string& label) {
  const std::string path = path_for(key);
  bool took_over = false;
  for (int attempt = 0; attempt < 4; ++attempt) {
    if (create(path, key, label)) return took_over ? ClaimResult::kTakenOver : ClaimResult::kClaimed;
    std::string judged;
    const Verdict verdict = judge(path, &judged);
    if (verdict == Verdict::kGone) continue;  // released in between: try again
    if (verdict == Verdict::kLive) return ClaimResult::kHeld;
    std::optional<ClaimOwner> moved;
    const Aside aside = remove_stale(path, judged, &moved);
    if (aside == Aside::kGone) continue;
    if (aside == Aside::kPutBack) return ClaimResult::kHeld;
    if (moved) log::info("claims: took over " + label + " from " + describe(*moved) + " (dead or lease expired)");
    took_over = true;
    std::lock_guard<std::mutex> lock(mutex_);
    ++taken_over_;
  }
  return ClaimResult::kHeld;
}

bool ClaimStore::holds(const std::string& key) const {
  std::string path;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = held_.find(key);
    if (it == held_.end()) return false;
    path = it->second;
  }
  const std::optional<ClaimOwner> owner = parse_owner(read_small(path));
  return owner && owner->token == self_.token;
}

void ClaimStore::release(const std::string& key) {
  const bool ours = holds(key);
  std::string path;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = held_.find(key);
    if (it == held_.end()) return;
    path = it->second;
    held_.erase(it);
  }
  if (ours) ::unlink(path.c_str());
}

void ClaimStore::release_all() {
  std::vector<std::string> keys;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, path] : held_) keys.push_back(key);
  }
  for (const std::string& key : keys) release(key);
}

void ClaimStore::renew() {
  std::vector<std::string> paths;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [key, path] : held_) paths.push_back(path);
  }
  for (const std::string& path : paths) {
    if (::utimensat(AT_FDCWD, path.c_str(), nullptr, 0) != 0 && errno == ENOENT) {
      log::debug("claims: " + path + " is gone (taken over while this worker was stalled?)");
    }
  }
  touch_heartbeat();
}

void ClaimStore::renew_loop() {
  const auto period = std::chrono::duration<double>(options_.lease_s / 4.0);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    renew();
    lock.lock();
  }
}

bool ClaimStore::live_claim(const std::string& key) const {
  std::string token;
  return judge(path_for(key), &token) == Verdict::kLive && token != self_.token;
}

std::optional<ClaimOwner> ClaimStore::owner_of(const std::string& key) const {
  return parse_owner(read_small(path_for(key)));
}

int64_t ClaimStore::held() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(held_.size());
}

int64_t ClaimStore::taken_over() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return taken_over_;
}

}  // namespace fluxbatch::io
