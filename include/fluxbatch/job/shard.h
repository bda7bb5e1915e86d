// Static shards: a deterministic partition of an expanded job for schedulers that start N copies of
// one command (Slurm job arrays and multi-task steps, Kubernetes Indexed Jobs). Shard K of N takes
// the images at render-order positions K, K+N, K+2N, ...: every shard gets the same share of each
// priority level (within one image), the partition depends only on the job file and the command
// line, and the N shards together hold every image exactly once. Torch-free.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace fluxbatch::job {

inline constexpr int64_t kMaxShards = 1000000;

struct Shard {
  int64_t index = 0;  // K: 0 .. count-1
  int64_t count = 1;  // N
  std::string source; // where K/N came from, for the log ("--shard 2/8", "SLURM_ARRAY_TASK_ID=5 ...")
  bool contains(int64_t position) const { return position % count == index; }
  bool whole() const { return count == 1; }
};

// Looks up an environment variable (std::getenv in the CLI; a map in tests).
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// "K/N" (0 <= K < N <= kMaxShards) or "auto" (shard_from_environment). InputError naming --shard
// otherwise.
Shard parse_shard(const std::string& text, const EnvLookup& env);

// The shard a scheduler gave this process, from the first of:
//   SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (and SLURM_ARRAY_TASK_MIN / _STEP when the array
//     does not start at 0 or steps): K = (ID - MIN) / STEP, N = COUNT; inside such a task a step of
//     several tasks (SLURM_NTASKS > 1) splits its shard further by SLURM_PROCID;
//   SLURM_PROCID with SLURM_NTASKS (srun -n N, or a job's tasks);
//   JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) with FLUXBATCH_SHARDS, the Job's completions
//     (Kubernetes does not tell a pod the count: set it in the pod template).
// InputError when none is set or the values do not make a shard.
Shard shard_from_environment(const EnvLookup& env);

// std::getenv as an EnvLookup.
EnvLookup process_environment();

}  // namespace fluxbatch::job
