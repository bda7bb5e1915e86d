// --shard K/N and --shard auto (the scheduler's environment).
#include "fluxbatch/job/shard.h"

#include <cstdlib>

#include "fluxbatch/core/error.h"

namespace fluxbatch::job {
namespace {

// A non-negative integer of at most 12 digits, or nullopt.
std::optional<int64_t> parse_count(const std::string& text) {
  if (text.empty() || text.size() > 12 || text.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  return std::stoll(text);
}

int64_t env_number(const EnvLookup& env, const std::string& name) {
  const std::optional<std::string> value = env(name);
  const std::optional<int64_t> n = value ? parse_count(*value) : std::nullopt;
  if (!n) {
    throw InputError("--shard auto: " + name + (value ? " is '" + *value + "', not a non-negative integer" : " is not set"));
  }
  return *n;
}

Shard checked(int64_t k, int64_t n, std::string source) {
  if (n < 1 || n > kMaxShards) {
    throw InputError(source + ": the shard count must be from 1 to " + std::to_string(kMaxShards) + ", got " +
                     std::to_string(n));
  }
  if (k < 0 || k >= n) {
    throw InputError(source + ": shard " + std::to_string(k) + " is not one of 0 .. " + std::to_string(n - 1));
  }
  return Shard{k, n, std::move(source)};
}

}  // namespace

Shard shard_from_environment(const EnvLookup& env) {
  if (env("SLURM_ARRAY_TASK_ID")) {
    const int64_t id = env_number(env, "SLURM_ARRAY_TASK_ID");
    const int64_t count = env_number(env, "SLURM_ARRAY_TASK_COUNT");
    const int64_t min = env("SLURM_ARRAY_TASK_MIN") ? env_number(env, "SLURM_ARRAY_TASK_MIN") : 0;
    const int64_t step = env("SLURM_ARRAY_TASK_STEP") ? env_number(env, "SLURM_ARRAY_TASK_STEP") : 1;
    if (step < 1 || id < min || (id - min) % step != 0 || (id - min) / step >= count) {
      throw InputError("--shard auto: the array's task ids are not MIN, MIN+STEP, ... (SLURM_ARRAY_TASK_ID=" +
                       std::to_string(id) + ", _MIN=" + std::to_string(min) + ", _STEP=" + std::to_string(step) +
                       ", _COUNT=" + std::to_string(count) +
                       "); submit the array as a range (--array=0-N) or pass --shard K/N yourself");
    }
    int64_t k = (id - min) / step;
    int64_t n = count;
    std::string source = "SLURM_ARRAY_TASK_ID=" + std::to_string(id) + " of " + std::to_string(count) + " tasks";
    const int64_t tasks = env("SLURM_NTASKS") ? env_number(env, "SLURM_NTASKS") : 1;
    if (tasks > 1) {
      const int64_t proc = env_number(env, "SLURM_PROCID");
      k = k * tasks + proc;
      n *= tasks;
      source += ", SLURM_PROCID=" + std::to_string(proc) + " of " + std::to_string(tasks);
    }
    return checked(k, n, "--shard auto (" + source + ")");
  }
  if (env("SLURM_PROCID")) {
    const int64_t proc = env_number(env, "SLURM_PROCID");
    const int64_t tasks = env("SLURM_NTASKS") ? env_number(env, "SLURM_NTASKS") : 1;
    return checked(proc, tasks,
                   "--shard auto (SLURM_PROCID=" + std::to_string(proc) + " of SLURM_NTASKS=" + std::to_string(tasks) + ")");
  }
  if (env("JOB_COMPLETION_INDEX")) {
    const int64_t index = env_number(env, "JOB_COMPLETION_INDEX");
    if (!env("FLUXBATCH_SHARDS")) {
      throw InputError("--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but FLUXBATCH_SHARDS is "
                       "not: set it to the Job's completions in the pod template");
    }
    const int64_t count = env_number(env, "FLUXBATCH_SHARDS");
    return checked(index, count,
                   "--shard auto (JOB_COMPLETION_INDEX=" + std::to_string(index) + " of FLUXBATCH_SHARDS=" +
                       std::to_string(count) + ")");
  }
  throw InputError("--shard auto: no scheduler told this process its shard (none of SLURM_ARRAY_TASK_ID, "
                   "SLURM_PROCID, JOB_COMPLETION_INDEX is set); pass --shard K/N");
}

Shard parse_shard(const std::string& text, const EnvLookup& env) {
  if (text == "auto") return shard_from_environment(env);
  const size_t slash = text.find('/');
  const std::optional<int64_t> k = slash == std::string::npos ? std::nullopt : parse_count(text.substr(0, slash));
  const std::optional<int64_t> n = slash == std::string::npos ? std::nullopt : parse_count(text.substr(slash + 1));
  if (!k || !n) throw InputError("--shard: expected K/N (shard K of N, 0 <= K < N) or auto, got '" + text + "'");
  return checked(*k, *n, "--shard " + text);
}

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

}  // namespace fluxbatch::job
