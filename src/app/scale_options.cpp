#include "scale_options.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/job/shard.h"

namespace fluxbatch::app {
namespace {

namespace fs = std::filesystem;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void add_scale_options(CLI::App& command, ScaleOptions& o) {
  const std::string group = "Scaling out (README \"Scaling out\")";
  command
      .add_option("--devices", o.devices,
                  "One worker process per device, sharing the job through the output directory: all (every "
                  "CUDA device), a list of CUDA indices (0,1,3; repeat one, 0,0, for two workers on one card), or "
                  "cpu entries (cpu,cpu). Each worker has its own --vram-budget; one progress display, one "
                  "summary, one exit code")
      ->type_name("all|LIST")
      ->group(group);
  command
      .add_option("--shard", o.shard,
                  "Render only shard K of N (images at render-order positions K, K+N, ...; 0 <= K < N), or "
                  "auto: from SLURM_ARRAY_TASK_ID/_COUNT, SLURM_PROCID/SLURM_NTASKS, or Kubernetes' "
                  "JOB_COMPLETION_INDEX with FLUXBATCH_SHARDS. Shards may share an output directory")
      ->type_name("K/N|auto")
      ->group(group);
  command
      .add_option("--grace", o.grace_s,
                  "After Ctrl-C or SIGTERM (scancel, preemption, a pod's stop), seconds the images in hand get to "
                  "finish; then they are abandoned (claims released, nothing half-written) and fluxbatch exits "
                  "(130 / 143) (default 25)")
      ->type_name("S")
      ->check(CLI::Range(0.0, 86400.0))
      ->group(group);
  command
      .add_option("--lease", o.lease_s,
                  "Seconds after which the claim of a worker on another host that stopped renewing it (node lost) "
                  "is taken over; claims of dead processes on this host are taken over at once (default 60)")
      ->type_name("S")
      ->check(CLI::Range(1.0, 86400.0))
      ->group(group);
  command.add_option("--worker-name", o.worker, "(set by --devices for its workers)")->group("");
  command.add_option("--session-offset", o.session_offset, "(set by --devices for its workers)")->group("");
}

void apply_scale_options(const ScaleOptions& o, runtime::RunnerOptions& runner) {
  if (!o.shard.empty()) runner.shard = job::parse_shard(o.shard, job::process_environment());
  runner.lease_s = o.lease_s;
  runner.worker = o.worker;
  runner.session_offset = o.session_offset;
  runner.grace_s = o.grace_s;
}

std::function<uint64_t()> shared_seed_source(const std::string& output_dir, bool create) {
  const std::string path = (fs::path(output_dir) / io::kStateDirName / "random-seeds").string();
  std::string text;
  if (create) {
    std::random_device device;
    const uint64_t drawn = (static_cast<uint64_t>(device()) << 32) ^ device();
    io::ensure_directory((fs::path(output_dir) / io::kStateDirName).string());
    text = io::create_once(path, std::to_string(drawn) + "\n");
  } else {
    std::ifstream in(path);
    if (!in) return nullptr;
    std::getline(in, text);
  }
  uint64_t base = 0;
  try {
    base = std::stoull(text);
  } catch (const std::exception&) {
    throw OutputError(path + ": not a seed base (remove it to draw new random seeds)");
  }
  // The k-th draw of the job (items with "random" in file order): the same in every process.
  return [base, k = uint64_t{0}]() mutable { return splitmix64(base + k++) & job::kMaxRandomSeed; };
}

}  // namespace fluxbatch::app
