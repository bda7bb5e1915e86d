// render's options for scaling out (README "Scaling out"): --devices (one worker process per device,
// src/app/render_workers.h), --shard K/N|auto (a static part of the job), --grace (how long a stop
// request waits for the images in hand), --lease (how soon the claims of a vanished worker are taken
// over), and the hidden options a --devices parent gives its workers.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/job_runner.h"

namespace fluxbatch::app {

inline constexpr double kDefaultGraceSeconds = 25.0;  // under Slurm's KillWait and Kubernetes' 30 s
inline constexpr double kDefaultLeaseSeconds = 60.0;

struct ScaleOptions {
  std::string devices;   // --devices: empty = this process renders
  std::string shard;     // --shard: empty = the whole job
  double grace_s = kDefaultGraceSeconds;
  double lease_s = kDefaultLeaseSeconds;
  // Given by a --devices parent to its workers (hidden): the worker's name and the session's start.
  std::string worker;
  int64_t session_offset = -1;
};
void add_scale_options(CLI::App& command, ScaleOptions& options);

// The runner's sharing settings: shard (InputError for a bad --shard), lease, worker name, session.
void apply_scale_options(const ScaleOptions& options, runtime::RunnerOptions& runner);

// Items with "seed": "random" get the same seeds in every worker and every later run on one output
// directory: the seeds are drawn from a base stored in <output_dir>/.fluxbatch/random-seeds, written
// by the first run that needs it (create = false: only read, as a dry run does). Returns a seed source
// for job::LoadOptions, or null when no base exists and create is false.
std::function<uint64_t()> shared_seed_source(const std::string& output_dir, bool create);

}  // namespace fluxbatch::app
