// manifest.jsonl serialisation, tolerant reading and durable appends.
#include "fluxbatch/io/manifest.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/output_fault.h"
#include "io/manifest_scan.h"
#include "io/write_faults.h"

namespace fluxbatch::io {
namespace {

using nlohmann::json;

const char* status_name(ManifestStatus s) { return s == ManifestStatus::kOk ? "ok" : "failed"; }

template <class T>
T field(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end()) throw InputError(std::string("missing field \"") + key + "\"");
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw InputError(std::string("field \"") + key + "\" has the wrong type");
  }
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  const int err = errno;
  throw_output_error("manifest " + path + ": " + what + ": " + std::strerror(err), err);
}

// True when the file is non-empty and its last byte is not '\n' (a torn line after a crash).
bool ends_torn(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) return false;
  char last = '\n';
  return ::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n';
}

// flock's answers on a filesystem that cannot lock at all (network mounts without a lock service).
bool lock_unsupported(int err) { return err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS || err == EINVAL; }

void write_all(int fd, const std::string& bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = detail::write_some(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, "write failed");
    done += static_cast<size_t>(n);
  }
}

}  // namespace

std::string manifest_line(const ManifestEntry& e) {
  json j = {{"index", e.index},
            {"name", e.name},
            {"copy", e.copy},
            {"prompt", e.prompt},
            {"seed", e.seed},
            {"width", e.width},
            {"height", e.height},
            {"steps", e.steps},
            {"guidance", e.guidance},
            {"max_sequence_length", e.max_sequence_length},
            {"model", e.model},
            {"file", e.file},
            {"status", status_name(e.status)},
            {"error", e.error},
            {"timings", {{"generate_s", e.timings.generate_s}, {"write_s", e.timings.write_s}}},
            {"batch_size", e.batch_size},
            {"finished_at", e.finished_at}};
  if (e.cached) j["cached"] = true;
  if (!e.loras.empty()) {
    json loras = json::array();
    for (const ManifestLora& l : e.loras) loras.push_back({{"path", l.path}, {"scale", l.scale}, {"sha256", l.sha256}});
    j["loras"] = std::move(loras);
  }
  // Invalid UTF-8 in a prompt must not lose the line: replace it rather than throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string summary_line(const ManifestSummary& s) {
  json stages = json::array();
  for (const ManifestStageMemory& m : s.stages) {
    stages.push_back({{"stage", m.stage},
                      {"peak_allocated_bytes", m.peak_allocated_bytes},
                      {"peak_reserved_bytes", m.peak_reserved_bytes},
                      {"min_device_free_bytes", m.min_device_free_bytes},
                      {"warned", m.warned}});
  }
  json times = json::array();
  for (const ManifestStageTime& t : s.stage_times) {
    json entry = {{"stage", t.stage}, {"seconds", t.seconds}};
    if (t.peak_allocated_bytes >= 0) entry["peak_allocated_bytes"] = t.peak_allocated_bytes;
    if (t.peak_reserved_bytes >= 0) entry["peak_reserved_bytes"] = t.peak_reserved_bytes;
    times.push_back(entry);
  }
  json j = {{"event", "summary"},
                  {"total", s.total},
                  {"rendered", s.rendered},
                  {"cached", s.cached},
                  {"skipped", s.skipped},
                  {"failed", s.failed},
                  {"blocked", s.blocked},
                  {"not_started", s.not_started},
                  {"interrupted", s.interrupted},
                  {"oom_retries", s.oom_retries},
                  {"seconds", s.seconds},
                  {"wall_s", s.wall_s},
                  {"images_per_hour", s.images_per_hour},
                  {"stages", times},
                  {"write",
                   {{"threads", s.write.threads},
                    {"seconds", s.write.seconds},
                    {"waited_s", s.write.waited_s},
                    {"peak_queued_bytes", s.write.peak_queued_bytes}}},
                  {"memory",
                   {{"device", s.device},
                    {"budget_bytes", s.budget_bytes},
                    {"allocator", s.allocator},
                    {"alloc_retries", s.alloc_retries},
                    {"stages", stages}}},
                  {"finished_at", s.finished_at}};
  if (!s.worker.empty()) j["worker"] = s.worker;
  if (s.done_elsewhere > 0) j["done_elsewhere"] = s.done_elsewhere;
  if (s.other_shard > 0) j["other_shard"] = s.other_shard;
  if (s.taken_over > 0) j["taken_over"] = s.taken_over;
  if (!s.cache.dir.empty()) {
    j["cache"] = {{"dir", s.cache.dir},       {"hits", s.cache.hits},       {"misses", s.cache.misses},
                  {"stored", s.cache.stored}, {"corrupt", s.cache.corrupt}, {"evicted", s.cache.evicted},
                  {"bytes", s.cache.bytes}};
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

json parse_object(std::string_view line) {
  json j;
  try {
    j = json::parse(line.begin(), line.end());
  } catch (const json::parse_error&) {
    throw InputError("not valid JSON (torn line?)");
  }
  if (!j.is_object()) throw InputError("not a JSON object");
  return j;
}

ManifestEntry entry_from_json(const json& j) {
  ManifestEntry e;
  e.index = field<int64_t>(j, "index");
  e.name = field<std::string>(j, "name");
  e.copy = field<int>(j, "copy");
  e.prompt = field<std::string>(j, "prompt");
  e.seed = field<uint64_t>(j, "seed");
  e.width = field<int>(j, "width");
  e.height = field<int>(j, "height");
  e.steps = field<int>(j, "steps");
  e.guidance = field<double>(j, "guidance");
  e.max_sequence_length = field<int>(j, "max_sequence_length");
  e.model = field<std::string>(j, "model");
  e.file = field<std::string>(j, "file");
  const auto status = field<std::string>(j, "status");
  if (status != "ok" && status != "failed") throw InputError("status \"" + status + "\" is not ok or failed");
  e.status = status == "ok" ? ManifestStatus::kOk : ManifestStatus::kFailed;
  e.error = field<std::string>(j, "error");
  const json timings = field<json>(j, "timings");
  e.timings.generate_s = field<double>(timings, "generate_s");
  e.timings.write_s = field<double>(timings, "write_s");
  e.batch_size = field<int>(j, "batch_size");
  e.finished_at = field<std::string>(j, "finished_at");
  if (const auto cached = j.find("cached"); cached != j.end() && cached->is_boolean()) e.cached = cached->get<bool>();
  if (const auto loras = j.find("loras"); loras != j.end()) {
    if (!loras->is_array()) throw InputError("\"loras\" is not an array");
    for (const json& l : *loras) {
      if (!l.is_object()) throw InputError("\"loras\" holds a non-object");
      ManifestLora lora;
      lora.path = field<std::string>(l, "path");
      lora.scale = field<double>(l, "scale");
      if (const auto sha = l.find("sha256"); sha != l.end() && sha->is_string()) lora.sha256 = sha->get<std::string>();
      e.loras.push_back(std::move(lora));
    }
  }
  return e;
}

}  // namespace

ManifestEntry parse_manifest_line(std::string_view line) { return entry_from_json(parse_object(line)); }

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

ManifestContents read_manifest(const std::string& path) {
  ManifestContents out;
  ManifestReader reader(path);
  reader.read([&out](const ManifestEntry& e, int64_t) { out.entries.push_back(e); }, &out.skipped,
              /*unterminated=*/true);
  out.events = reader.events();
  return out;
}

ManifestWriter::ManifestWriter(const std::string& path) : path_(path) { open(); }

void ManifestWriter::open() {
  // Read access too: ends_torn() peeks at the last byte.
  fd_ = detail::open_for_writing(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path_, "cannot open for appending (the output directory must be writable)");
  if (!can_lock_) return;
  // Find out now, before any image is rendered, whether this filesystem can lock files at all. Another
  // writer holding the lock (EWOULDBLOCK) is normal: appends wait their turn.
  if (detail::lock_file(fd_, LOCK_SH | LOCK_NB) == 0) {
    ::flock(fd_, LOCK_UN);
    return;
  }
  const int err = errno;
  if (err == EWOULDBLOCK || err == EINTR) return;
  if (lock_unsupported(err)) {
    warn_unlocked(err);
    return;
  }
  ::close(fd_);
  fd_ = -1;
  errno = err;
  fail(path_, "cannot lock");
}

// Network filesystems without a lock service: the run works, but lines of several writers appending at
// the same moment are no longer kept apart.
void ManifestWriter::warn_unlocked(int err) {
  can_lock_ = false;
  log::warn("manifest " + path_ + ": this filesystem cannot lock files (" + std::strerror(err) +
            "); run only one fluxbatch worker on this output directory at a time");
}

ManifestWriter::~ManifestWriter() {
  if (fd_ >= 0) ::close(fd_);
}

std::unique_lock<std::mutex> ManifestWriter::hold() { return std::unique_lock<std::mutex>(mutex_); }

// Appends to the file we hold would vanish with it if someone deleted or replaced the manifest while
// the job runs: start a new one at the path instead (a re-run restores the lines of images already
// written from their own metadata).
void ManifestWriter::reopen_if_replaced() {
  struct stat held {}, now {};
  if (::fstat(fd_, &held) != 0) return;
  if (::stat(path_.c_str(), &now) == 0 && now.st_dev == held.st_dev && now.st_ino == held.st_ino) return;
  log::warn("manifest " + path_ + " was deleted or replaced while the job ran: starting a new one; a re-run "
            "restores the lines of the images written before from their metadata");
  ::close(fd_);
  fd_ = -1;
  open();
}

void ManifestWriter::append_line(const std::string& line) {
  std::lock_guard<std::mutex> in_process(mutex_);
  reopen_if_replaced();
  bool locked = false;
  while (can_lock_ && !locked) {
    if (detail::lock_file(fd_, LOCK_EX) == 0) {
      locked = true;
    } else if (errno != EINTR) {
      const int err = errno;
      if (!lock_unsupported(err)) {
        errno = err;
        fail(path_, "cannot lock");
      }
      warn_unlocked(err);
    }
  }
  struct Unlock {
    int fd;
    bool locked;
    ~Unlock() {
      if (locked) ::flock(fd, LOCK_UN);
    }
  } unlock{fd_, locked};
  // Measured under the lock: where this line begins, whatever other writers appended before.
  struct stat st {};
  const bool sized = ::fstat(fd_, &st) == 0;
  // A writer killed mid-line left a torn line: end it, so this entry starts on its own line.
  const std::string text = ends_torn(fd_) ? "\n" + line + "\n" : line + "\n";
  try {
    write_all(fd_, text, path_);
    if (::fsync(fd_) != 0) fail(path_, "fsync failed");
  } catch (...) {
    // No torn line stays behind (disk full mid-line): cut the file back to where this line began.
    if (sized && ::ftruncate(fd_, st.st_size) != 0) {
      // The reader skips a torn line and the next writer starts on a fresh one: nothing more to do.
    }
    throw;
  }
}

void ManifestWriter::append(const ManifestEntry& entry) { append_line(manifest_line(entry)); }

void ManifestWriter::append_summary(const ManifestSummary& summary) { append_line(summary_line(summary)); }

ManifestReader::ManifestReader(std::string path) : path_(std::move(path)) {}

size_t ManifestReader::take_lines(const std::string& buffer, int64_t pos,
                                  const std::function<void(const ManifestEntry&, int64_t offset)>& on_entry,
                                  std::vector<std::string>* skipped) {
  size_t start = 0;
  for (size_t end = buffer.find('\n'); end != std::string::npos; end = buffer.find('\n', start)) {
    const std::string_view line(buffer.data() + start, end - start);
    const int64_t line_offset = pos + static_cast<int64_t>(start);
    ++line_number_;
    start = end + 1;
    if (line.empty()) continue;
    switch (detail::scan_manifest_line(line, entry_)) {  // the lines fluxbatch writes, fast
      case detail::ScanResult::kEntry:
        on_entry(entry_, line_offset);
        continue;
      case detail::ScanResult::kEvent:
        ++events_;
        continue;
      case detail::ScanResult::kDeclined:
        break;
    }
    try {  // anything else, or a problem: the full parser decides, and names the problem
      const json j = parse_object(line);
      if (j.contains("event")) {
        ++events_;
        continue;
      }
      on_entry(entry_from_json(j), line_offset);
    } catch (const InputError& e) {
      if (skipped != nullptr) skipped->push_back(path_ + ":" + std::to_string(line_number_) + ": " + e.what());
    }
  }
  return start;
}

void ManifestReader::read(const std::function<void(const ManifestEntry&, int64_t offset)>& on_entry,
                          std::vector<std::string>* skipped, bool unterminated) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return;  // no manifest yet
    fail(path_, "cannot open for reading");
  }
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } close_fd{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path_, "cannot stat");
  if (static_cast<int64_t>(st.st_size) <= offset_) return;  // nothing new: the common case of a refresh
  std::string buffer;
  // Big enough for a whole manifest of a large job in few reads, no bigger than what is new.
  std::vector<char> chunk(static_cast<size_t>(std::min<int64_t>(int64_t{4} << 20, st.st_size - offset_ + 1)));
  int64_t pos = offset_;  // file offset of buffer[0]
  for (;;) {
    const ssize_t n = ::pread(fd, chunk.data(), chunk.size(), pos + static_cast<int64_t>(buffer.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path_, "read failed");
    if (n == 0) break;
    buffer.append(chunk.data(), static_cast<size_t>(n));
    const size_t start = take_lines(buffer, pos, on_entry, skipped);
    buffer.erase(0, start);
    pos += static_cast<int64_t>(start);
  }
  if (unterminated && !buffer.empty()) {  // a last line without its newline: read as it is
    buffer += '\n';
    pos += static_cast<int64_t>(take_lines(buffer, pos, on_entry, skipped)) - 1;
  }
  offset_ = pos;  // a last line without its newline is read again next time
}

}  // namespace fluxbatch::io
