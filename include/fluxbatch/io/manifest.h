// manifest.jsonl: one JSON line per finished or failed image, appended and fsynced as soon as the
// image is done, so a crash loses at most the line being written. The reader tolerates such a
// torn line; resume decisions are built on top of it (runtime/execution/job_runner.h).
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace fluxbatch::io {

inline constexpr const char* kManifestFileName = "manifest.jsonl";
// Bookkeeping of the workers sharing an output directory: claims/ (io::ClaimStore) while images are
// being rendered, and random-seeds (the base of a job's "random" seeds in this directory).
inline constexpr const char* kStateDirName = ".fluxbatch";

enum class ManifestStatus { kOk, kFailed };  // "ok" | "failed" on disk

struct ManifestTimings {
  double generate_s = 0.0;  // this image's share of its batch's generate() time
  double write_s = 0.0;     // PNG encode + atomic write
};

// A LoRA the image was rendered with (on disk: {"path", "scale", "sha256"}).
struct ManifestLora {
  std::string path;
  double scale = 1.0;
  std::string sha256;
};

// One line. Field names on disk are the member names (timings: {"generate_s", "write_s"}).
struct ManifestEntry {
  int64_t index = 0;  // RenderItem::index
  std::string name;
  int copy = 0;
  std::string prompt;
  uint64_t seed = 0;
  int width = 0;
  int height = 0;
  int steps = 0;
  double guidance = 0.0;
  int max_sequence_length = 0;
  std::string model;  // ImageGenerator::model_description()
  std::string file;   // relative to the output directory
  ManifestStatus status = ManifestStatus::kOk;
  std::string error;  // why it failed; empty when ok
  ManifestTimings timings;
  int batch_size = 1;
  std::string finished_at;  // UTC, ISO 8601 ("2025-01-31T12:00:00Z")
  bool cached = false;      // copied from the image cache; on disk only when true ("cached": true)
  std::vector<ManifestLora> loras;  // in the order applied; on disk only when there are any
};

// Memory use of one pipeline stage over a run (runtime::MemoryMonitor's report).
struct ManifestStageMemory {
  std::string stage;                // "load", "encode", "denoise", "decode"
  int64_t peak_allocated_bytes = 0;  // live tensor bytes at the stage's highest point
  int64_t peak_reserved_bytes = 0;   // held by the allocator (equal to allocated on the CPU)
  int64_t min_device_free_bytes = -1;  // cudaMemGetInfo's lowest free; -1 when not known (CPU)
  bool warned = false;               // passed the warning threshold of the budget
};

// Where a run's time went, one pipeline stage ("load", "calibrate", "encode", "denoise", "decode",
// "write", "other") at a time, with the stage's device memory peak where one was measured.
struct ManifestStageTime {
  std::string stage;
  double seconds = 0.0;
  int64_t peak_allocated_bytes = -1;  // -1: not a device stage (write, other)
  int64_t peak_reserved_bytes = -1;
};

// The output writer's threads: PNG encoding and atomic writes while the device goes on.
struct ManifestWriteStats {
  int threads = 0;               // 0: written on the rendering thread
  double seconds = 0.0;          // summed over the threads
  double waited_s = 0.0;         // time the rendering thread waited for them
  int64_t peak_queued_bytes = 0; // most image bytes waiting at once (host memory)
};

// The cache (--cache) over a run: image and prompt-embedding lookups together.
struct ManifestCache {
  std::string dir;  // empty: no cache (then not written)
  int64_t hits = 0, misses = 0, stored = 0, corrupt = 0, evicted = 0;
  int64_t bytes = 0;  // on disk at the end, as last counted
};

// The last line of a run: {"event": "summary", ...}. Item readers skip every line with an "event"
// key, so resuming is unaffected by it.
struct ManifestSummary {
  int64_t total = 0, rendered = 0, skipped = 0, failed = 0, blocked = 0, not_started = 0;
  int64_t cached = 0;            // of `rendered`: copied from the image cache
  double wall_s = 0.0;           // the whole render command, model loading included
  double images_per_hour = 0.0;  // rendered / wall_s * 3600
  std::vector<ManifestStageTime> stage_times;  // on disk: "stages"
  ManifestWriteStats write;
  ManifestCache cache;
  int64_t oom_retries = 0;    // chunks halved after running out of memory
  // Sharing (written only when set): the worker's name from a --devices parent, images of this run's
  // work other workers finished, other shards' images, claims taken over from dead workers.
  std::string worker;
  int64_t done_elsewhere = 0, other_shard = 0, taken_over = 0;
  bool interrupted = false;
  double seconds = 0.0;
  std::string device;         // "cuda:0", "cpu"
  int64_t budget_bytes = 0;   // the memory budget in force; 0: none
  std::string allocator;      // the caching allocator's settings in force
  int64_t alloc_retries = 0;  // the CUDA allocator's retries after freeing its cache (num_alloc_retries)
  std::vector<ManifestStageMemory> stages;
  std::string finished_at;
};

// The JSON text of one entry, without the newline.
std::string manifest_line(const ManifestEntry& entry);
std::string summary_line(const ManifestSummary& summary);
// Parses one line; throws InputError naming the problem (bad JSON, missing or mistyped field).
ManifestEntry parse_manifest_line(std::string_view line);

// Current UTC time in the finished_at format.
std::string utc_timestamp();

struct ManifestContents {
  std::vector<ManifestEntry> entries;  // in file order
  std::vector<std::string> skipped;    // "manifest.jsonl:7: <why>" for each unreadable line
  int64_t events = 0;                  // lines with an "event" key (run summaries), not items
};

// Reads a manifest; a missing file reads as empty. Lines with an "event" key are counted in
// `events` and otherwise ignored. Unparsable lines (a torn last line after a
// crash, or garbage) are skipped and listed in `skipped`, never fatal. OutputError when the file
// exists but cannot be read.
ManifestContents read_manifest(const std::string& path);

// Appends lines to a manifest, creating it. Any number of writers (threads of one process, processes
// on one host or on several hosts of a shared filesystem) may append to one manifest at once: every
// line is one write() of the whole line + '\n' to a file opened O_APPEND, made while holding an
// exclusive lock on the file (flock: on Linux NFS clients it becomes an NFS lock (NFSv4, or NLM for
// NFSv3), and taking it makes the client re-read the file's size, so the append lands at the true end;
// a mount with `nolock` loses that guarantee), then fsynced before the lock goes. So lines never
// interleave or overwrite each other. If the file ends in a torn line (a writer killed mid-write), a
// newline is added first, under the same lock, so the next entry starts on its own line. On a
// filesystem that cannot lock files at all it warns once and appends unlocked (one worker at a time).
class ManifestWriter {
 public:
  explicit ManifestWriter(const std::string& path);
  ~ManifestWriter();
  ManifestWriter(const ManifestWriter&) = delete;
  ManifestWriter& operator=(const ManifestWriter&) = delete;

  // One locked write() of the line + '\n', then fsync. On failure the file is cut back to where the line
  // began (no torn line left by a full disk) and OutputError names the path: io::OutputFault when the
  // filesystem refuses writes (full, read-only, I/O error). A manifest deleted or replaced since the last
  // append is started anew at the path, with a warning.
  void append(const ManifestEntry& entry);
  void append_summary(const ManifestSummary& summary);
  const std::string& path() const { return path_; }
  // Blocks until no append of this writer is under way and keeps further appends from starting, for
  // as long as the returned lock lives (a process about to exit at once must not leave a torn line).
  std::unique_lock<std::mutex> hold();

 private:
  void open();
  void reopen_if_replaced();
  void append_line(const std::string& line);
  void warn_unlocked(int err);

  std::string path_;
  int fd_ = -1;
  bool can_lock_ = true;  // false once the filesystem said it cannot lock files
  std::mutex mutex_;
};

// Reads a manifest incrementally: the first read() returns every complete line, later ones only the
// lines appended since (by this process or any other). A last line without its newline is left for
// a later read (it is still being written), unless a newline was added after it (a torn line: then
// it is reported unreadable). Lines with an "event" key are skipped.
class ManifestReader {
 public:
  explicit ManifestReader(std::string path);
  // Calls on_entry(entry, offset of the line) for each new item line, in file order; unreadable lines
  // go to *skipped ("manifest.jsonl:7: <why>") when given. A missing file reads as empty; OutputError
  // when it exists but cannot be read. unterminated: also take a last line without its newline (a
  // one-time read of a file nobody writes).
  void read(const std::function<void(const ManifestEntry&, int64_t offset)>& on_entry,
            std::vector<std::string>* skipped = nullptr, bool unterminated = false);
  int64_t offset() const { return offset_; }  // bytes consumed so far (complete lines)
  int64_t events() const { return events_; }

 private:
  size_t take_lines(const std::string& buffer, int64_t pos,
                    const std::function<void(const ManifestEntry&, int64_t offset)>& on_entry,
                    std::vector<std::string>* skipped);
  std::string path_;
  int64_t offset_ = 0;
  int64_t line_number_ = 0;
  int64_t events_ = 0;
  ManifestEntry entry_;  // reused: its strings keep their capacity from line to line
};

}  // namespace fluxbatch::io
