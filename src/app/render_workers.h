// render --devices: one worker process per device on this host, all rendering the same job into the
// same output directory and splitting it through claims (runtime::ClaimedWork), as any independent
// processes would. The parent loads nothing: it starts the workers (this same command, with --device
// and --progress json), shows their events as one progress display, prints their log lines prefixed
// with the worker's name, forwards Ctrl-C / SIGTERM once, and returns one exit code.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "cli_render.h"
#include "fluxbatch/job/shard.h"

namespace fluxbatch::app {

// One worker: its name ("cuda:1", "cpu#2"), the --device it is given, and the CUDA_VISIBLE_DEVICES
// entry it runs with (CUDA workers see only their card, as cuda:0).
struct WorkerDevice {
  std::string name;
  std::string device;
  std::optional<std::string> visible;
};

// "all" (cuda_count devices; InputError when there is none), or a comma-separated list of CUDA indices
// ("0,1", "cuda:2") and "cpu" entries; a repeated entry is another worker on the same device.
// `visible`: the CUDA_VISIBLE_DEVICES this process runs under (indices refer to its entries).
std::vector<WorkerDevice> parse_devices(const std::string& text, int cuda_count,
                                        const std::optional<std::string>& visible);

// Runs the workers to the end. The summary adds theirs up (exit_code_for gives the combined code);
// ModelError / DeviceError / OutputError when a worker failed with exit code 3 or died.
runtime::RunSummary run_workers(const RenderCommand& command, const job::JobSpec& spec, const job::Shard& shard);

}  // namespace fluxbatch::app
