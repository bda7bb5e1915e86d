// The end of a render: one summary in the log (images per hour, time and device memory peak per
// stage, the output writer, the cache) and the same as the manifest's last line
// ({"event": "summary", ...}).
#pragma once
#include <optional>
#include <string>

#include "fluxbatch/io/cache_store.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/execution/stage_clock.h"
#include "render_memory.h"

namespace fluxbatch::app {

// `device`: what the device side measured; none when nothing needed it (every image finished
// earlier or came from the image cache). `cache`: the cache's directory and counts, when one was used.
// `worker`: this worker's name when a --devices parent started it ("" otherwise).
void report_run(const runtime::RunSummary& summary, const runtime::StageClock& clock,
                const std::optional<RenderMemory::Facts>& device, const std::string& device_name,
                const io::CacheStore* cache, const std::string& output_dir, const std::string& worker = "");

}  // namespace fluxbatch::app
