// Runs an expanded job through an ImageGenerator: resume (skip finished images), batching,
// one PNG + one manifest line per image as soon as it exists, failures recorded per item.
// Torch-free; the model lives behind runtime::ImageGenerator.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/job/shard.h"
#include "fluxbatch/runtime/cache/image_cache.h"
#include "fluxbatch/runtime/execution/image_generator.h"
#include "fluxbatch/runtime/execution/job_observer.h"

namespace fluxbatch::runtime {

struct RunnerOptions {
  bool overwrite = false;  // re-render every item, atomically replacing existing images
  bool dry_run = false;    // plan only: no generate(), no file written
  int batch_size = 1;      // most images per generate() call (>= 1)
  // The batch for an item's shape (width, height, max_sequence_length), e.g. from the memory
  // planner (--batch auto); clamped to [1, batch_size]. Unset: batch_size for every shape.
  std::function<int(const job::RenderItem&)> batch_for;
  // Out-of-memory recovery: a chunk whose generate() runs out of memory is halved and retried;
  // after this many consecutive successful chunks of one shape the limit for that shape doubles
  // back towards batch_size. Each grow-back that runs out of memory doubles the wait for that shape.
  int grow_after = 4;
  // Polled between batches (and between the calls of a batch split after running out of memory);
  // once true the runner finishes writing the images in hand and stops
  // (SIGINT handling sets it). Null: never stops early.
  const std::atomic<bool>* stop = nullptr;
  // PNG encoding and atomic writes run on this many threads while the generator goes on; 0 writes
  // each image on the generator's thread before the next one is made. Manifest lines keep the
  // order in which images arrived either way, each after its PNG is in place.
  int write_threads = 2;
  // Host memory that images waiting to be written may hold; the generator's hand-over blocks past it.
  int64_t write_queue_bytes = int64_t{512} << 20;
  // Told about the job, each batch and each image (progress displays). Null: nobody.
  JobObserver* observer = nullptr;
  // Images rendered by any earlier job: an item found there is copied (with its own text chunks)
  // instead of rendered, and every image rendered is stored there. Null: no cache.
  ImageCache* image_cache = nullptr;
  // Batches hold images of one LoRA set only (merged LoRAs: a batch runs with one set of weights). Off,
  // images with different LoRAs share batches through per-image side paths.
  bool group_by_loras = false;

  // Work sharing (README "Scaling out"): every image is claimed in <output_dir>/.fluxbatch/claims before
  // it is rendered (io::ClaimStore), so any number of runs on one output directory split the job.
  double lease_s = 60.0;   // a claim its owner stopped renewing this long ago is taken over
  double poll_s = 1.0;     // how often images other live workers hold are looked at again
  std::string worker;      // this worker's name in its claims and log lines ("cuda:1", "slurm 812_3")
  job::Shard shard;        // only the images of this shard (render-order position % count == index)
  // Manifest lines from this byte offset on were written during this session, by any worker: an image
  // with such a line (ok or failed) is not attempted again, also with --overwrite. -1: the manifest's
  // size when this run planned. (A --devices parent passes its own, so its workers agree.)
  int64_t session_offset = -1;
  // After *stop turns true the images in hand get grace_s seconds; past that the runner gives up: it
  // waits for any manifest append under way, releases its claims and calls on_abandon, which must not
  // return (the CLI exits). grace_s < 0 or no on_abandon: no limit.
  double grace_s = -1.0;
  std::function<void()> on_abandon;
};

enum class ItemState {
  kRender,   // will be rendered
  kSkip,     // finished earlier: PNG present and its manifest line matches the item
  kBlocked,  // a file is in the way that this item did not produce; needs --overwrite
  kOtherShard,  // another shard's image (RunnerOptions::shard)
};

struct PlannedItem {
  const job::RenderItem* item = nullptr;  // points into the JobSpec given to plan_job
  ItemState state = ItemState::kRender;
  const char* reason = "";  // why skipped or blocked (for --dry-run and logs)
  // kSkip only: the PNG was written by a run killed before its manifest line (the PNG's own
  // metadata matches the item and model); run_job appends the missing line instead of rendering.
  bool restore_manifest_line = false;
};

struct JobPlan {
  std::vector<PlannedItem> items;                            // render order
  std::vector<std::vector<const job::RenderItem*>> batches;  // the kRender items, grouped
  std::vector<std::string> manifest_warnings;                // unreadable manifest lines
  int64_t count(ItemState state) const;
};

// Resume rule: `item` is finished when <output_dir>/<item.file> exists and the LAST "ok" manifest
// line for that file records the item's prompt, seed, size, steps, guidance,
// max_sequence_length and (when `model` is given) model. Only the last ok line counts because a
// later --overwrite run replaces the image. (plan_job also accepts a PNG without its line whose
// embedded "fluxbatch" and "parameters" texts are exactly this item's: a kill between the PNG's
// rename and the manifest append.)
bool is_finished(const job::RenderItem& item, const std::string& output_dir, const io::ManifestContents& manifest,
                 const std::optional<std::string>& model);

// Decides every item's state and groups the items to render into batches: a batch starts at the
// first unbatched item in render order and takes the following items with the same width,
// height, steps, max_sequence_length and priority, up to batch_size (or batch_for(item) when given, clamped
// to [1, batch_size]) (so batching never moves an
// image ahead of a higher-priority one). `model` as for is_finished. InputError when two items
// write the same file or batch_size < 1.
// With `shard`, the other shards' images are kOtherShard.
JobPlan plan_job(const job::JobSpec& spec, const std::string& output_dir, const std::optional<std::string>& model,
                 bool overwrite, int batch_size,
                 const std::function<int(const job::RenderItem&)>& batch_for = {}, bool group_by_loras = false,
                 const job::Shard& shard = {});

struct RunSummary {
  int64_t total = 0;        // items in the job
  int64_t rendered = 0;     // PNG written this run
  int64_t skipped = 0;      // finished earlier
  int64_t failed = 0;       // out of memory even alone, a bad image, or its PNG could not be created
  int64_t blocked = 0;      // kBlocked items (counted as failures for the exit code)
  int64_t not_started = 0;  // left when interrupted (or, in a dry run, the ones that would render)
  int64_t oom_retries = 0;  // chunks halved after running out of memory
  int64_t restored = 0;     // of `skipped`: manifest lines restored for PNGs of a killed run
  int64_t cached = 0;       // of `rendered`: copied from the image cache instead of rendered
  int64_t other_shard = 0;  // other shards' images (not this run's work)
  int64_t done_elsewhere = 0;  // of this run's work: finished by other workers sharing the directory
  int64_t taken_over = 0;   // claims taken over from dead or expired workers
  int64_t lost_claims = 0;  // images whose claim another worker took over while this one rendered them
  bool interrupted = false;
  std::vector<std::string> failures;  // "<file>: <reason>" for failed and blocked items
  double seconds = 0.0;
  // The output queue: threads, summed PNG encode + write time on them, time the generator's thread
  // waited for it (queue full, final drain), and the most image bytes waiting at once.
  int write_threads = 0;
  double write_s = 0.0;
  double write_blocked_s = 0.0;
  int64_t write_peak_queued_bytes = 0;
};

// Plans `spec` (model = generator.model_description()), creates output_dir, removes temporary
// files left by a killed run's PNG writes, calls generator.prepare() once with every item to
// render (an out-of-memory error there is logged, each batch then encodes for itself), then renders
// batch by batch through generate_each(), writing <output_dir>/<item.file> (PNG with
// "parameters" and "fluxbatch" text chunks, on the output queue's threads) and appending to
// <output_dir>/manifest.jsonl as soon as each image is written, in the order images arrived.
// Each batch is taken just before it renders (ClaimedWork): an image is claimed in
// <output_dir>/.fluxbatch/claims, and the manifest's new lines are read, before it is rendered, and
// its claim is released after its line is written, so any number of runs on one output directory
// (this process's threads excepted: one run per process) share the job: a batch starts at the first
// image no other worker holds and takes the later ones of the same shape and priority. Images other
// live workers hold are waited for; those of dead workers are taken over. Alone, the batches are
// exactly those of plan_job (batch_for consulted after prepare()).
// Out of memory (runtime::is_out_of_memory) in a call: the items of that call not yet delivered are
// halved and retried after runtime::release_cached_memory(); an item that runs out of memory even
// alone is recorded failed with the reason ("<error> (out of memory even alone, ...)") and the job
// goes on. Any other exception from the generator (or from prepare()) means the model or the device
// cannot do the work: the job stops with a ModelError / DeviceError (see runtime::throw_stage_error;
// fluxbatch errors keep their kind), the images already handed to the output queue written, every
// image written kept and in the manifest, the rest left for a re-run (their claims released); the
// message ends with how many were rendered and left. So does an io::OutputFault (disk full, read-only,
// I/O error) writing a PNG or the manifest; another OutputError writing one PNG fails only that item.
// Finished images are never redone, and since an image depends only on its own item, retries never
// change a result.
RunSummary run_job(const job::JobSpec& spec, const std::string& output_dir, const RunnerOptions& options,
                   ImageGenerator& generator);

}  // namespace fluxbatch::runtime
