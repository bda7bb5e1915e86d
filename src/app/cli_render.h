// `fluxbatch render JOB`: validate, resolve device/dtype/batch, load the model, run the job.
#pragma once
#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "cli_common.h"
#include "memory_options.h"
#include "render_cache.h"
#include "render_progress.h"
#include "scale_options.h"
#include "speed_options.h"
#include "fluxbatch/runtime/execution/job_runner.h"

namespace fluxbatch::app {

struct RenderCommand {
  std::string file;
  std::string model;   // empty: the job's "model"
  std::string device;  // empty: cuda if available, else cpu
  std::string dtype;   // empty: bf16 on cuda, fp32 on cpu
  std::string batch = "auto";
  MemoryOptions memory;     // --vram-budget, --vram-reserve, --monitor-interval, --monitor-threshold
  std::string quantize = "none";  // --quantize none|nf4
  SpeedOptions speed;             // --kernels, --cuda-graphs, --compute, --attention
  bool overwrite = false;
  bool lora_merge = false;  // --lora-merge
  bool dry_run = false;
  int write_threads = 2;    // --write-threads
  ProgressOptions progress; // --progress, --progress-interval
  CacheOptions cache;       // --cache, --cache-max, --no-cache
  std::string config;       // --config NAME|FILE
  bool print_config = false;  // --print-config
  ScaleOptions scale;       // --devices, --shard, --grace, --lease
  JobOptions job;
  std::vector<std::string> argv;  // the whole command line (a --devices parent runs it again per worker)
  CLI::App* cli = nullptr;  // the parsed subcommand: which flags were given (presets fill the others)
};

CLI::App* add_render_command(CLI::App& app, RenderCommand& command);

// The run's summary, or nullopt for --dry-run (which prints its plan to stdout). Throws the
// fluxbatch::Error subclasses for invalid input, model, device and output problems.
std::optional<runtime::RunSummary> run_render(const RenderCommand& command);

}  // namespace fluxbatch::app
