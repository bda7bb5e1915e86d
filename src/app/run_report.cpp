#include "run_report.h"

#include <cstdio>
#include <filesystem>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::app {
namespace {

std::string seconds_text(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", seconds);
  return buf;
}

void log_lines(const std::string& text) {
  for (size_t start = 0, end = 0; start < text.size(); start = end + 1) {
    end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) log::info(text.substr(start, end - start));
  }
}

}  // namespace

void report_run(const runtime::RunSummary& summary, const runtime::StageClock& clock,
                const std::optional<RenderMemory::Facts>& device, const std::string& device_name,
                const io::CacheStore* cache, const std::string& output_dir, const std::string& worker) {
  const std::vector<runtime::StageTime> times = clock.totals();
  const double wall = clock.since_start();
  const double per_hour = wall > 0.0 ? 3600.0 * static_cast<double>(summary.rendered) / wall : 0.0;

  char head[200];
  std::snprintf(head, sizeof head, "summary: %lld image(s) in %s, %.0f images/hour%s; time per stage:",
                static_cast<long long>(summary.rendered), seconds_text(wall).c_str(), per_hour,
                summary.cached > 0 ? (" (" + std::to_string(summary.cached) + " from the image cache)").c_str() : "");
  std::string line = head;
  for (const runtime::StageTime& t : times) line += " " + t.stage + " " + seconds_text(t.seconds) + ",";
  char write[200];
  std::snprintf(write, sizeof write, " write %s on %d thread(s) (%s waited, at most %s queued)",
                seconds_text(summary.write_s).c_str(), summary.write_threads,
                seconds_text(summary.write_blocked_s).c_str(),
                runtime::format_bytes(summary.write_peak_queued_bytes).c_str());
  log::info(line + write);
  if (device) {
    log_lines(runtime::format_memory_report(device->memory));
  } else {
    log::info("memory: the device was not used (nothing to render)");
  }
  io::CacheStats stats;
  if (cache != nullptr) {
    stats = cache->stats();
    log::info("cache: " + std::to_string(stats.hits) + " hit(s), " + std::to_string(stats.misses) + " miss(es), " +
              std::to_string(stats.stored) + " stored, " + std::to_string(stats.corrupt) + " damaged, " +
              std::to_string(stats.evicted) + " evicted; " + runtime::format_bytes(stats.bytes) + " in " +
              std::to_string(stats.entries) + " entries of at most " + runtime::format_bytes(cache->max_bytes()) +
              " (" + cache->dir() + ")");
  }

  io::ManifestSummary s;
  s.total = summary.total;
  s.rendered = summary.rendered;
  s.cached = summary.cached;
  s.skipped = summary.skipped;
  s.failed = summary.failed;
  s.blocked = summary.blocked;
  s.not_started = summary.not_started;
  s.oom_retries = summary.oom_retries;
  s.worker = worker;
  s.done_elsewhere = summary.done_elsewhere;
  s.other_shard = summary.other_shard;
  s.taken_over = summary.taken_over;
  s.interrupted = summary.interrupted;
  s.seconds = summary.seconds;
  s.wall_s = wall;
  s.images_per_hour = per_hour;
  for (const runtime::StageTime& t : times) {
    io::ManifestStageTime st{t.stage, t.seconds, -1, -1};
    if (device) {
      for (const runtime::StageMemory& m : device->memory.stages) {
        if (m.stage == t.stage) {
          st.peak_allocated_bytes = m.peak_allocated;
          st.peak_reserved_bytes = m.peak_reserved;
        }
      }
    }
    s.stage_times.push_back(st);
  }
  s.stage_times.push_back({"write", summary.write_s, -1, -1});
  s.write = {summary.write_threads, summary.write_s, summary.write_blocked_s, summary.write_peak_queued_bytes};
  if (cache != nullptr) {
    s.cache = {cache->dir(), stats.hits, stats.misses, stats.stored, stats.corrupt, stats.evicted, stats.bytes};
  }
  s.device = device ? device->device : device_name;
  if (device) {
    s.budget_bytes = device->budget_bytes;
    s.allocator = device->allocator;
    s.alloc_retries = device->memory.alloc_retries;
    for (const runtime::StageMemory& m : device->memory.stages) {
      s.stages.push_back({m.stage, m.peak_allocated, m.peak_reserved, m.min_device_free, m.warned});
    }
  } else {
    s.allocator = "not used";
  }
  s.finished_at = io::utc_timestamp();
  std::error_code ec;
  if (!std::filesystem::is_directory(output_dir, ec)) return;  // nothing was rendered there
  try {
    io::ManifestWriter manifest((std::filesystem::path(output_dir) / io::kManifestFileName).string());
    manifest.append_summary(s);
  } catch (const OutputError& e) {
    log::warn(std::string("run summary not recorded: ") + e.what());
  }
}

}  // namespace fluxbatch::app
