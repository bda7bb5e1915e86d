// A background thread that samples memory use (CUDA: the caching allocator's allocated and reserved
// bytes and cudaMemGetInfo's free; CPU: the counting budget's live bytes), attributes each sample to
// the pipeline stage running now ("load", "encode", "denoise", "decode"), warns once per stage when
// use passes a share of the budget, and reports each stage's peak plus the allocator's retry count.
// The logic is independent of the sampler, so it is tested with a fake one.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fluxbatch::runtime {

class CpuMemoryBudget;

struct MemorySample {
  int64_t allocated = 0;       // live tensor bytes
  int64_t reserved = 0;        // held by the allocator (the CPU counter: equal to allocated)
  int64_t device_free = -1;    // cudaMemGetInfo free; -1 when not known
  int64_t peak_allocated = 0;  // the allocator's high-water mark since its last reset
  int64_t alloc_retries = 0;   // cumulative retries of a failed cudaMalloc after freeing the cache
};
using MemorySampler = std::function<MemorySample()>;

// CUDA device `device_index` (getDeviceStats + cudaMemGetInfo); DeviceError without CUDA.
MemorySampler cuda_memory_sampler(int device_index);
// The counting CPU allocator behind `budget` (which must outlive the sampler).
MemorySampler cpu_memory_sampler(const CpuMemoryBudget& budget);

struct StageMemory {
  std::string stage;
  int64_t peak_allocated = 0;
  int64_t peak_reserved = 0;
  int64_t min_device_free = -1;  // -1: not known
  int64_t samples = 0;
  bool warned = false;
};

struct MemoryReport {
  int64_t budget_bytes = 0;
  double threshold = 0.9;
  std::vector<StageMemory> stages;  // in the order first seen
  int64_t alloc_retries = 0;        // the allocator's cumulative count at the last sample
};

struct MonitorOptions {
  int interval_ms = 100;     // background sampling period; 0: no thread (stage changes still sample)
  double threshold = 0.9;    // warn when use passes threshold * budget_bytes
  int64_t budget_bytes = 0;  // 0: never warn
  std::function<void(const std::string&)> warn;  // default: log::warn
};

class MemoryMonitor {
 public:
  // InputError for interval_ms < 0 or a threshold outside (0, 1].
  MemoryMonitor(MemorySampler sampler, MonitorOptions options);
  ~MemoryMonitor();  // stops the thread
  MemoryMonitor(const MemoryMonitor&) = delete;
  MemoryMonitor& operator=(const MemoryMonitor&) = delete;

  void start();  // starts the sampling thread (no-op when interval_ms == 0 or already running)
  void stop();   // joins it; takes one last sample

  // Thread-safe. Samples the end of the previous stage and the start of this one; "" means idle
  // (samples then belong to no stage). A stage's peak is the highest sample, raised to the
  // allocator's high-water mark when that mark rose during the stage (so short spikes between
  // samples are not missed).
  void set_stage(const std::string& stage);
  std::string stage() const;
  void sample();  // one sample now, attributed to the current stage
  MemorySample latest() const;  // the most recent sample (all zeros before the first)

  MemoryReport report() const;

 private:
  void record(const MemorySample& s);  // with mutex_ held
  void end_stage(const MemorySample& s);
  StageMemory& stage_entry(const std::string& name);
  void run();

  MemorySampler sampler_;
  MonitorOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
  std::string stage_;
  int64_t stage_start_mark_ = 0;  // the high-water mark when the current stage began
  std::vector<StageMemory> stages_;
  int64_t alloc_retries_ = 0;
  MemorySample latest_;
};

// Multi-line text for the end-of-run log: one line per stage, then the retry count.
std::string format_memory_report(const MemoryReport& report);

}  // namespace fluxbatch::runtime
