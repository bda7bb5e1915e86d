#include "fluxbatch/runtime/memory/memory_monitor.h"

#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::runtime {

MemorySampler cuda_memory_sampler(int device_index) {
#ifdef FLUXBATCH_WITH_CUDA
  if (device_index >= 0 && device_index < cuda_device_count()) {
    const auto index = static_cast<c10::DeviceIndex>(device_index);
    return [index]() {
      const c10::cuda::CUDAGuard guard(index);  // the sampling thread has no current device
      MemorySample s;
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
      constexpr size_t kAll = 0;  // StatType::AGGREGATE
      s.allocated = stats.allocated_bytes[kAll].current;
      s.reserved = stats.reserved_bytes[kAll].current;
      s.peak_allocated = stats.allocated_bytes[kAll].peak;
      s.alloc_retries = stats.num_alloc_retries;
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) s.device_free = static_cast<int64_t>(free);
      return s;
    };
  }
#endif
  throw DeviceError("memory monitor: no CUDA device cuda:" + std::to_string(device_index));
}

MemorySampler cpu_memory_sampler(const CpuMemoryBudget& budget) {
  return [&budget]() {
    MemorySample s;
    s.allocated = budget.live_bytes();
    s.reserved = s.allocated;
    s.peak_allocated = budget.peak_bytes();
    return s;
  };
}

MemoryMonitor::MemoryMonitor(MemorySampler sampler, MonitorOptions options)
    : sampler_(std::move(sampler)), options_(std::move(options)) {
  if (options_.interval_ms < 0) {
    throw InputError("--monitor-interval: must be 0 (off) or positive, got " + std::to_string(options_.interval_ms));
  }
  if (!(options_.threshold > 0.0 && options_.threshold <= 1.0)) {
    throw InputError("--monitor-threshold: must be within (0, 1], got " + std::to_string(options_.threshold));
  }
  if (!options_.warn) options_.warn = [](const std::string& m) { log::warn(m); };
}

MemoryMonitor::~MemoryMonitor() { stop(); }

void MemoryMonitor::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (options_.interval_ms == 0 || thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void MemoryMonitor::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  sample();
}

void MemoryMonitor::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto period = std::chrono::milliseconds(options_.interval_ms);
  while (!wake_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    const MemorySample s = sampler_();  // outside the lock: a CUDA query can take a while
    lock.lock();
    record(s);
  }
}

void MemoryMonitor::set_stage(const std::string& stage) {
  const MemorySample s = sampler_();
  std::lock_guard<std::mutex> lock(mutex_);
  record(s);
  end_stage(s);
  stage_ = stage;
  stage_start_mark_ = s.peak_allocated;
  record(s);
}

std::string MemoryMonitor::stage() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stage_;
}

void MemoryMonitor::sample() {
  const MemorySample s = sampler_();
  std::lock_guard<std::mutex> lock(mutex_);
  record(s);
}

StageMemory& MemoryMonitor::stage_entry(const std::string& name) {
  const auto it = std::find_if(stages_.begin(), stages_.end(), [&](const StageMemory& m) { return m.stage == name; });
  if (it != stages_.end()) return *it;
  stages_.push_back(StageMemory{name});
  return stages_.back();
}

MemorySample MemoryMonitor::latest() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return latest_;
}

void MemoryMonitor::record(const MemorySample& s) {
  latest_ = s;
  alloc_retries_ = std::max(alloc_retries_, s.alloc_retries);
  if (stage_.empty()) return;
  StageMemory& m = stage_entry(stage_);
  ++m.samples;
  m.peak_allocated = std::max(m.peak_allocated, s.allocated);
  m.peak_reserved = std::max(m.peak_reserved, s.reserved);
  if (s.device_free >= 0) m.min_device_free = m.min_device_free < 0 ? s.device_free : std::min(m.min_device_free, s.device_free);
  const int64_t use = std::max(s.allocated, s.reserved);
  const double limit = options_.threshold * static_cast<double>(options_.budget_bytes);
  if (options_.budget_bytes > 0 && !m.warned && static_cast<double>(use) > limit) {
    m.warned = true;
    char pct[32];
    std::snprintf(pct, sizeof pct, "%.0f%%", 100.0 * static_cast<double>(use) / static_cast<double>(options_.budget_bytes));
    options_.warn("memory: " + stage_ + " uses " + format_bytes(use) + ", " + pct + " of the " +
                  format_bytes(options_.budget_bytes) + " budget (warning threshold " +
                  std::to_string(static_cast<int>(options_.threshold * 100.0 + 0.5)) + "%)");
  }
}

void MemoryMonitor::end_stage(const MemorySample& s) {
  if (stage_.empty()) return;
  // The high-water mark rose during this stage: its true peak is that mark.
  if (s.peak_allocated > stage_start_mark_) {
    StageMemory& m = stage_entry(stage_);
    m.peak_allocated = std::max(m.peak_allocated, s.peak_allocated);
  }
}

MemoryReport MemoryMonitor::report() const {
  std::lock_guard<std::mutex> lock(mutex_);
  MemoryReport r;
  r.budget_bytes = options_.budget_bytes;
  r.threshold = options_.threshold;
  r.stages = stages_;
  r.alloc_retries = alloc_retries_;
  return r;
}

std::string format_memory_report(const MemoryReport& report) {
  std::string out;
  for (const StageMemory& m : report.stages) {
    out += "memory: " + m.stage + " peak " + format_bytes(m.peak_allocated) + " allocated, " +
           format_bytes(m.peak_reserved) + " reserved";
    if (m.min_device_free >= 0) out += ", device free at least " + format_bytes(m.min_device_free);
    if (report.budget_bytes > 0) {
      char pct[32];
      std::snprintf(pct, sizeof pct, " (%.0f%% of the budget)",
                    100.0 * static_cast<double>(std::max(m.peak_allocated, m.peak_reserved)) /
                        static_cast<double>(report.budget_bytes));
      out += pct;
    }
    out += "\n";
  }
  out += "memory: allocator retries " + std::to_string(report.alloc_retries) +
         (report.budget_bytes > 0 ? ", budget " + format_bytes(report.budget_bytes) : std::string()) + "\n";
  return out;
}

}  // namespace fluxbatch::runtime
