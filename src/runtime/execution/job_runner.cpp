// The job runner: plan (resume + batching), then generate -> PNG -> manifest line, per image.
#include "fluxbatch/runtime/execution/job_runner.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <condition_variable>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include <unistd.h>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/io/claim_store.h"
#include "fluxbatch/io/output_fault.h"
#include "fluxbatch/io/png_writer.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/execution/claimed_work.h"
#include "fluxbatch/runtime/execution/ordered_queue.h"
#include "fluxbatch/runtime/execution/resume_index.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "fluxbatch/runtime/memory/oom.h"

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

std::string output_path(const std::string& output_dir, const std::string& file) {
  return (fs::path(output_dir) / file).string();
}

// file -> its last "ok" line (a later line means a later write replaced the image).
std::unordered_map<std::string, const io::ManifestEntry*> last_ok_lines(const io::ManifestContents& manifest) {
  std::unordered_map<std::string, const io::ManifestEntry*> out;
  for (const io::ManifestEntry& e : manifest.entries) {
    if (e.status == io::ManifestStatus::kOk) out[e.file] = &e;
  }
  return out;
}

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

std::vector<io::PngText> png_text(const job::RenderItem& item, const std::string& model) {
  io::InfotextParams p;
  p.prompt = item.prompt;
  p.steps = item.params.steps;
  p.guidance = item.params.guidance;
  p.seed = item.params.seed;
  p.width = item.params.width;
  p.height = item.params.height;
  p.model = model;
  for (const job::LoraRef& lora : item.params.loras) p.loras.push_back({lora.name(), lora.scale, lora.short_hash});
  return {{"parameters", io::a1111_parameters(p)}, {"fluxbatch", job::item_to_json(item)}};
}

// True when the PNG at `path` carries exactly the text chunks run_job writes for `item` (and,
// when given, `model`): it was rendered for this item by a run killed before its manifest line.
bool png_written_for(const job::RenderItem& item, const std::string& path, const std::optional<std::string>& model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::vector<io::PngText> found;
  try {
    found = io::read_png_text(bytes.str());
  } catch (const std::exception&) {
    return false;  // not a PNG, or a damaged one: someone else's file
  }
  const std::vector<io::PngText> want = png_text(item, model.value_or(""));
  bool parameters = !model.has_value(), json = false;
  for (const io::PngText& t : found) {
    if (t.key == "fluxbatch") json = t.text == want[1].text;
    if (t.key == "parameters" && model) parameters = t.text == want[0].text;
  }
  return json && parameters;
}

PlannedItem plan_item(const job::RenderItem& item, size_t position, const std::string& output_dir, bool overwrite,
                      const ResumeIndex& index, const std::optional<std::string>& model) {
  if (overwrite) return {&item, ItemState::kRender, ""};
  const std::string path = output_path(output_dir, item.file);
  if (index.ok_line_matches(position) && is_file(path)) {
    return {&item, ItemState::kSkip, "finished earlier (image and manifest line match)"};
  }
  std::error_code ec;
  if (fs::exists(path, ec)) {
    if (png_written_for(item, path, model)) {
      return {&item, ItemState::kSkip,
              "finished by an interrupted run (the PNG's metadata matches; its manifest line is restored)", true};
    }
    return {&item, ItemState::kBlocked,
            "exists but was not rendered with these parameters by fluxbatch (manifest); "
            "--overwrite replaces it"};
  }
  return {&item, ItemState::kRender, ""};
}

void check_unique_files(const job::JobSpec& spec) {
  std::unordered_map<std::string_view, const job::RenderItem*> seen;  // views of the spec's own strings
  seen.reserve(spec.items.size());
  for (const job::RenderItem& item : spec.items) {
    const auto [it, inserted] = seen.emplace(std::string_view(item.file), &item);
    if (!inserted) {
      throw InputError(item.location + ": output file " + item.file + " is also written by the item at " +
                       it->second->location);
    }
  }
}

using BatchFor = std::function<int(const job::RenderItem&)>;

int shape_batch(const job::RenderItem& item, int batch_size, const BatchFor& batch_for) {
  return batch_for ? std::clamp(batch_for(item), 1, batch_size) : batch_size;
}

std::vector<std::vector<const job::RenderItem*>> make_batches(const std::vector<PlannedItem>& items, int batch_size,
                                                              const BatchFor& batch_for, bool group_by_loras) {
  std::vector<std::vector<const job::RenderItem*>> batches;
  std::vector<bool> taken(items.size(), false);
  for (size_t i = 0; i < items.size(); ++i) {
    if (taken[i] || items[i].state != ItemState::kRender) continue;
    std::vector<const job::RenderItem*> batch{items[i].item};
    taken[i] = true;
    const int most = shape_batch(*items[i].item, batch_size, batch_for);
    for (size_t j = i + 1; j < items.size() && static_cast<int>(batch.size()) < most; ++j) {
      if (items[j].item->priority != items[i].item->priority) break;  // render order is by priority
      if (!taken[j] && items[j].state == ItemState::kRender && batchable(*items[i].item, *items[j].item, group_by_loras)) {
        batch.push_back(items[j].item);
        taken[j] = true;
      }
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

// A non-memory error from the generator as the error that stops the job: fluxbatch's model, device and
// output errors as they are (they name what failed), anything else (libtorch, std) named with `context`.
[[noreturn]] void stop_job(const std::exception& e, const std::string& context) {
  if (dynamic_cast<const ModelError*>(&e) != nullptr) throw ModelError(e.what());
  if (dynamic_cast<const DeviceError*>(&e) != nullptr) throw DeviceError(e.what());
  if (const auto* fault = dynamic_cast<const io::OutputFault*>(&e)) throw io::OutputFault(e.what(), fault->error_code());
  if (dynamic_cast<const OutputError*>(&e) != nullptr) throw OutputError(e.what());
  throw_stage_error(e, context);
}

// One execution of a plan: owns the manifest writer, the running summary and the output queue.
// Everything that appends to the manifest or changes the summary runs as a commit of the queue, so
// manifest lines keep the order in which images (and failures) arrived, while PNG encoding and the
// atomic writes run on the queue's worker threads.
class Run {
 public:
  Run(const std::string& output_dir, const RunnerOptions& options, ImageGenerator& generator,
      io::ManifestWriter& manifest, io::ClaimStore& claims, RunSummary& summary, int64_t to_render)
      : output_dir_(output_dir),
        overwrite_(options.overwrite),
        generator_(generator),
        model_(generator.model_description()),
        manifest_(manifest),
        claims_(claims),
        summary_(summary),
        to_render_(to_render),
        batch_size_(options.batch_size),
        batch_for_(options.batch_for),
        grow_after_(std::max(1, options.grow_after)),
        stop_(options.stop),
        observer_(options.observer),
        image_cache_(options.image_cache),
        queue_(std::max(0, options.write_threads), std::max<int64_t>(1, options.write_queue_bytes)) {}

  // The item's claim is held; the commit writes its failed line and releases it.
  void record_blocked(const job::RenderItem* item, const std::string& reason) {
    queue_.submit(0, [] {}, [this, item, reason] {
      ++summary_.blocked;
      summary_.failures.push_back(item->file + ": " + reason);
      log::warn(item->file + ": " + reason);
      io::ManifestEntry e = entry_for(*item, 0);
      e.status = io::ManifestStatus::kFailed;
      e.error = reason;
      record(*item, e);
    });
  }

  // As record_blocked, for a PNG whose line a kill prevented.
  void restore_line(const job::RenderItem* item, const std::string& reason) {
    queue_.submit(0, [] {}, [this, item, reason] {
      ++summary_.restored;
      log::info(item->file + ": " + reason);
      record(*item, entry_for(*item, 0));  // batch size 0: not known any more
    });
  }

  // Renders a planned batch in chunks of at most the shape's current limit; when a chunk runs out
  // of memory, its items not yet delivered are halved and retried (finished images stay finished).
  void render_batch(const std::vector<const job::RenderItem*>& batch, int64_t number, int64_t batches) {
    ShapeLimit& shape = limit_for(*batch.front());
    std::vector<const job::RenderItem*> todo = batch;
    bool attempted = false;
    while (!todo.empty()) {
      // After an out-of-memory split a batch takes several calls: Ctrl-C need not wait for all.
      if (attempted && stop_ != nullptr && stop_->load()) return;
      attempted = true;
      const size_t n = std::min(todo.size(), static_cast<size_t>(shape.limit));
      const std::vector<const job::RenderItem*> chunk(todo.begin(), todo.begin() + static_cast<std::ptrdiff_t>(n));
      const ChunkOutcome outcome = render_chunk(chunk, number, batches);
      std::vector<const job::RenderItem*> left;  // this chunk's items to retry, then the rest
      for (size_t i = 0; i < n; ++i) {
        if (outcome.retry[i]) left.push_back(chunk[i]);
      }
      left.insert(left.end(), todo.begin() + static_cast<std::ptrdiff_t>(n), todo.end());
      todo = std::move(left);
      if (!outcome.out_of_memory) {
        grow(shape, *batch.front(), n);
        continue;
      }
      shape.successes = 0;
      if (shape.grown) {
        // The grown size failed: wait twice as long before trying it again, so a job whose memory is
        // just short of a larger batch does not pay an out-of-memory error every few chunks.
        shape.wait *= 2;
        shape.grown = false;
      }
      if (n > 1) {
        shape.limit = static_cast<int>((n + 1) / 2);
        ++summary_.oom_retries;
        log::warn("out of memory at batch " + std::to_string(n) + " (" + shape_name(*batch.front()) +
                  "): retrying at batch " + std::to_string(shape.limit));
      }
    }
  }

  // Hands an image of the image cache to the output queue, as write_image does a rendered one.
  void copy_cached(const job::RenderItem& item, std::string png) {
    auto w = std::make_shared<Write>();
    w->item = &item;
    w->cached = true;
    w->png = std::move(png);
    const auto bytes = static_cast<int64_t>(w->png.size());
    queue_.submit(bytes, [this, w] { write_png(*w); }, [this, w] { commit_image(*w); });
  }

  // Waits until every image handed over is written and recorded; rethrows a manifest failure.
  void finish_writes() {
    queue_.drain();
    summary_.write_threads = queue_.threads();
    summary_.write_s = queue_.work_seconds();
    summary_.write_blocked_s = queue_.blocked_seconds();
    summary_.write_peak_queued_bytes = queue_.peak_pending_bytes();
  }

 private:
  struct ShapeLimit {
    int limit = 1;       // most images per generate() call for this shape now
    int cap = 1;         // the shape's planned batch: growing back stops here
    int successes = 0;   // consecutive chunks that fit since the last change
    int wait = 1;        // successes needed before growing back (doubles after a failed grow-back)
    bool grown = false;  // the limit was raised by growing back and has not fit yet
  };

  // Memory depends on the image size and the text length, not on steps or prompts.
  static std::string shape_name(const job::RenderItem& item) {
    return std::to_string(item.params.width) + "x" + std::to_string(item.params.height) + ", sequence " +
           std::to_string(item.params.max_sequence_length);
  }

  ShapeLimit& limit_for(const job::RenderItem& item) {
    const int cap = shape_batch(item, batch_size_, batch_for_);
    return limits_.try_emplace(shape_name(item), ShapeLimit{cap, cap, 0, grow_after_, false}).first->second;
  }

  void grow(ShapeLimit& shape, const job::RenderItem& item, size_t ran) {
    if (ran >= static_cast<size_t>(shape.limit)) shape.grown = false;  // the grown size fitted
    if (shape.limit >= shape.cap || ++shape.successes < shape.wait) return;
    const int grown = std::min(shape.cap, shape.limit * 2);
    log::info("batch for " + shape_name(item) + " grows back from " + std::to_string(shape.limit) + " to " +
              std::to_string(grown) + " after " + std::to_string(shape.successes) + " chunks that fit");
    shape.limit = grown;
    shape.successes = 0;
    shape.grown = true;
  }

  struct ChunkOutcome {
    bool out_of_memory = false;  // the call ran out of memory with more than one item
    std::vector<bool> retry;     // per chunk item: neither delivered nor recorded failed
  };

  // One generate_each() call; each image goes to the output queue the moment it arrives. Items it
  // never delivered are retried (out of memory with more than one item) or recorded failed.
  ChunkOutcome render_chunk(const std::vector<const job::RenderItem*>& batch, int64_t number, int64_t batches) {
    std::vector<job::RenderItem> items;
    items.reserve(batch.size());
    std::string files;
    for (const job::RenderItem* item : batch) {
      items.push_back(*item);
      files += (files.empty() ? "" : ", ") + item->file;
    }
    const job::RenderParams& p = batch.front()->params;
    log::debug("batch of " + std::to_string(batch.size()) + " (" + std::to_string(p.width) + "x" +
               std::to_string(p.height) + ", " + std::to_string(p.steps) + " steps): " + files);
    BatchEvent event{number, batches, batch.size(), p.width, p.height, p.steps, 0.0};
    if (observer_ != nullptr) observer_->batch_started(event);
    const auto start = Clock::now();
    auto last = start;
    std::vector<bool> delivered(batch.size(), false);
    size_t count = 0;
    std::exception_ptr fatal;  // the manifest could not be written: the job must stop
    const ImageSink on_image = [&](size_t index, Image&& image) {
      if (index >= batch.size() || delivered[index]) return;  // not ours, or a second copy
      delivered[index] = true;
      // The first image carries its share of the batch's shared work (encode, denoise); each
      // later one the time since the previous, so the shares add up to the call's time.
      const auto now = Clock::now();
      const double first = std::chrono::duration<double>(now - start).count() / static_cast<double>(batch.size());
      const double seconds = count++ == 0 ? first : std::chrono::duration<double>(now - last).count();
      last = now;
      try {
        write_image(*batch[index], std::move(image), seconds, batch.size());
      } catch (...) {
        fatal = std::current_exception();
        throw;
      }
    };
    std::string error;
    bool out_of_memory = false;
    try {
      generator_.generate_each(items, on_image);
    } catch (const std::exception& e) {
      if (fatal) std::rethrow_exception(fatal);
      if (!is_out_of_memory(e)) {
        // Not memory: the model or the device cannot do this work (a model that cannot load, components
        // that do not fit together, a CUDA fault), for this item or any other. The job stops here, every
        // unrendered item left to a re-run, rather than failing them all one by one.
        stop_job(e, "rendering " + files);
      }
      error = exception_message(e);
      out_of_memory = true;
    } catch (...) {
      if (fatal) std::rethrow_exception(fatal);
      throw ModelError("rendering " + files + ": unknown error from the image generator");
    }
    event.seconds = seconds_since(start);
    if (observer_ != nullptr) observer_->batch_finished(event);
    std::vector<const job::RenderItem*> missing;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!delivered[i]) missing.push_back(batch[i]);
    }
    ChunkOutcome outcome;
    outcome.retry.assign(batch.size(), false);
    if (missing.empty()) return outcome;
    outcome.out_of_memory = out_of_memory;
    if (out_of_memory && batch.size() > 1) {
      for (size_t i = 0; i < batch.size(); ++i) outcome.retry[i] = !delivered[i];
      return outcome;
    }
    if (error.empty()) {
      error = "the image generator returned " + std::to_string(batch.size() - missing.size()) +
              " images for a batch of " + std::to_string(batch.size());
    } else if (out_of_memory) {
      log::warn(missing.front()->file + ": out of memory even alone (batch 1)");
      error += " (out of memory even alone, at batch 1, after the generator's cheaper fallbacks)";
    }
    fail_all(missing, error, seconds_since(last), batch.size());
    return outcome;
  }

  io::ManifestEntry entry_for(const job::RenderItem& item, size_t batch_size) const {
    io::ManifestEntry e;
    e.index = item.index;
    e.name = item.name;
    e.copy = item.copy;
    e.prompt = item.prompt;
    e.seed = item.params.seed;
    e.width = item.params.width;
    e.height = item.params.height;
    e.steps = item.params.steps;
    e.guidance = item.params.guidance;
    e.max_sequence_length = item.params.max_sequence_length;
    for (const job::LoraRef& lora : item.params.loras) e.loras.push_back({lora.path, lora.scale, lora.sha256});
    e.model = model_;
    e.file = item.file;
    e.batch_size = static_cast<int>(batch_size);
    e.finished_at = io::utc_timestamp();
    return e;
  }

  // Only inside commits: the item's line, then its claim released. A worker stalled past its lease may
  // find its claim taken over: the new owner decides the image's line, so this one writes none (its
  // PNG, written atomically, has the same bytes).
  void record(const job::RenderItem& item, const io::ManifestEntry& e) {
    if (!claims_.holds(item.file)) {
      ++summary_.lost_claims;
      const std::optional<io::ClaimOwner> owner = claims_.owner_of(item.file);
      log::warn(item.file + ": its claim was taken over" + (owner ? " by " + io::describe(*owner) : std::string()) +
                " while this worker had it (stalled past the lease?); its manifest line is left to that worker");
      claims_.release(item.file);
      return;
    }
    manifest_.append(e);
    claims_.release(item.file);
  }

  // Only inside commits (they are serialised).
  std::string progress() const {
    return "[" + std::to_string(summary_.rendered + summary_.failed) + "/" + std::to_string(to_render_) + "] ";
  }

  void notify(const job::RenderItem& item, bool ok, const std::string& error, io::ManifestTimings timings,
              bool cached = false) {
    if (observer_ == nullptr) return;
    ImageEvent event;
    event.item = &item;
    event.path = output_path(output_dir_, item.file);
    event.ok = ok;
    event.cached = cached;
    event.error = error;
    event.generate_s = timings.generate_s;
    event.write_s = timings.write_s;
    event.done = summary_.rendered + summary_.failed;
    event.to_render = to_render_;
    observer_->image_finished(event);
  }

  // A commit: the failed line, the counters, the log.
  void fail_item(const job::RenderItem& item, const std::string& reason, io::ManifestTimings timings,
                 size_t batch_size) {
    ++summary_.failed;
    summary_.failures.push_back(item.file + ": " + reason);
    log::error(progress() + item.file + " failed: " + reason);
    io::ManifestEntry e = entry_for(item, batch_size);
    e.status = io::ManifestStatus::kFailed;
    e.error = reason;
    e.timings = timings;
    record(item, e);
    notify(item, false, reason, timings);
  }

  void fail_all(const std::vector<const job::RenderItem*>& items, const std::string& reason, double seconds,
                size_t batch_size) {
    const double per_image = seconds / static_cast<double>(items.size());
    for (const job::RenderItem* item : items) {
      queue_.submit(0, [] {}, [this, item, reason, per_image, batch_size] {
        fail_item(*item, reason, {per_image, 0.0}, batch_size);
      });
    }
  }

  static std::string image_problem(const job::RenderItem& item, const Image& image) {
    const std::string want = std::to_string(item.params.width) + "x" + std::to_string(item.params.height);
    if (image.width != item.params.width || image.height != item.params.height) {
      return "the image generator returned a " + std::to_string(image.width) + "x" + std::to_string(image.height) +
             " image for a " + want + " item";
    }
    if (image.rgb.size() != size_t(image.width) * size_t(image.height) * 3) {
      return "the image generator returned " + std::to_string(image.rgb.size()) + " bytes for a " + want +
             " RGB image";
    }
    return "";
  }

  // What one image's trip to disk found out: filled by the work, read by the commit.
  struct Write {
    const job::RenderItem* item = nullptr;
    Image image;
    bool cached = false;     // from the image cache: `png` instead of `image`
    std::string png;         // the image cache's PNG (no text chunks yet)
    double generate_s = 0.0;
    size_t batch_size = 0;
    std::string error;  // the image was bad or its PNG could not be written
    double write_s = 0.0;
  };

  // Hands the image to the output queue: PNG encoding and the atomic write on a worker, then (in
  // arrival order) the manifest line, the counters and the log line. Rethrows an earlier commit's
  // failure (the manifest could not be written).
  void write_image(const job::RenderItem& item, Image&& image, double generate_s, size_t batch_size) {
    auto w = std::make_shared<Write>();
    w->item = &item;
    w->image = std::move(image);
    w->generate_s = generate_s;
    w->batch_size = batch_size;
    const auto bytes = static_cast<int64_t>(w->image.rgb.size());
    queue_.submit(bytes, [this, w] { write_png(*w); }, [this, w] { commit_image(*w); });
  }

  // The work of an output task, on a writer thread: the PNG (pixels encoded once, stored in the image
  // cache, then given the item's text chunks) written atomically.
  void write_png(Write& w) {
    const job::RenderItem& item = *w.item;
    const bool cached = w.cached;
    if (!cached) {
      if (std::string problem = image_problem(item, w.image); !problem.empty()) {
        w.error = std::move(problem);
        return;
      }
    }
    const auto start = Clock::now();
    const std::string path = output_path(output_dir_, item.file);
    try {
      const std::string plain =
          cached ? std::move(w.png) : io::encode_plain_png(w.image.width, w.image.height, w.image.rgb);
      if (!cached && image_cache_ != nullptr && w.image.cacheable) image_cache_->store(item, plain);
      w.image = Image();  // encoded: give the pixels back before the disk's turn
      const std::string png = io::add_png_text(plain, png_text(item, model_));
      io::ensure_directory(fs::path(path).parent_path().string());
      // Without --overwrite the plan saw no file here; never clobber one that appeared since.
      io::write_file_atomic(path, png, overwrite_);
    } catch (const io::OutputFault&) {
      throw;  // the filesystem takes no more writes (full, read-only, failing): the queue stops, so does the job
    } catch (const std::exception& e) {
      w.error = e.what();
    }
    w.write_s = seconds_since(start);
    w.image = Image();
    w.png = std::string();
  }

  void commit_image(const Write& w) {
    const job::RenderItem& item = *w.item;
    const bool cached = w.cached;
    if (!w.error.empty()) return fail_item(item, w.error, {w.generate_s, w.write_s}, w.batch_size);
    io::ManifestEntry e = entry_for(item, w.batch_size);
    e.timings = {w.generate_s, w.write_s};
    e.cached = cached;
    ++summary_.rendered;  // the image is on disk; should its line fail, a re-run restores it from the PNG
    if (cached) ++summary_.cached;
    record(item, e);
    log::info(progress() + output_path(output_dir_, item.file) +
              (cached ? std::string(" (from the image cache)") : " (" + format_seconds(w.generate_s) + ")"));
    notify(item, true, "", e.timings, cached);
  }

  std::string output_dir_;
  bool overwrite_ = false;
  ImageGenerator& generator_;
  std::string model_;
  io::ManifestWriter& manifest_;
  io::ClaimStore& claims_;
  RunSummary& summary_;
  int64_t to_render_ = 0;
  int batch_size_ = 1;
  BatchFor batch_for_;
  int grow_after_ = 1;
  const std::atomic<bool>* stop_ = nullptr;
  JobObserver* observer_ = nullptr;
  ImageCache* image_cache_ = nullptr;
  std::map<std::string, ShapeLimit> limits_;
  // Last: destroyed first, so commits still running at destruction find every member above alive.
  OrderedQueue queue_;
};

// io::write_file_atomic's temporaries (".<name>.tmp-<pid>-...") that a killed run left next to the job's
// outputs. A temporary is written only by the worker holding its image's claim, so one whose image no
// live worker holds has no writer any more.
void remove_stale_temporaries(const job::JobSpec& spec, const std::string& output_dir, const io::ClaimStore& claims) {
  // directory -> file name -> item (views of the spec's strings: a million images stay cheap)
  std::unordered_map<std::string, std::unordered_map<std::string_view, const job::RenderItem*>> by_dir;
  for (const job::RenderItem& item : spec.items) {
    const std::string_view file(item.file);
    const size_t slash = file.rfind('/');
    const std::string dir = slash == std::string_view::npos ? std::string() : std::string(file.substr(0, slash));
    by_dir[dir].emplace(slash == std::string_view::npos ? file : file.substr(slash + 1), &item);
  }
  for (const auto& [dir, names] : by_dir) {
    std::error_code ec;
    for (fs::directory_iterator it(fs::path(output_dir) / dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      const size_t tmp = name.rfind(".tmp-");
      if (name.empty() || name[0] != '.' || tmp == std::string::npos || tmp < 1) continue;
      const auto found = names.find(std::string_view(name).substr(1, tmp - 1));
      if (found == names.end() || claims.live_claim(found->second->file)) continue;
      std::error_code remove_ec;
      if (fs::remove(it->path(), remove_ec)) log::debug("removed " + it->path().string() + " (interrupted write)");
    }
  }
  // io::check_writable_directory's probes: created and removed at once, so any left belong to a killed run.
  std::error_code ec;
  for (fs::directory_iterator it(output_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind(".fluxbatch-write-check.tmp-", 0) != 0) continue;
    std::error_code remove_ec;
    fs::remove(it->path(), remove_ec);
  }
}

void prepare_generator(const std::vector<const job::RenderItem*>& items, ImageGenerator& generator) {
  if (items.empty()) return;
  try {
    generator.prepare(items);
  } catch (const ModelError&) {
    throw;  // the model cannot load: no batch could render either (as in render_chunk)
  } catch (const DeviceError&) {
    throw;
  } catch (const std::exception& e) {
    if (!is_out_of_memory(e)) stop_job(e, "preparing the job");
    // generate() still has to cope with every item: each batch encodes what it needs itself.
    log::warn("preparing the generator ran out of memory (each batch will do that work itself): " +
              exception_message(e));
  }
}

bool stop_requested(const RunnerOptions& options) { return options.stop != nullptr && options.stop->load(); }

// `error` again, of the same kind, with `note` appended to its message.
[[noreturn]] void rethrow_with_note(const Error& error, const std::string& note) {
  const std::string message = error.what() + note;
  if (const auto* fault = dynamic_cast<const io::OutputFault*>(&error)) throw io::OutputFault(message, fault->error_code());
  if (dynamic_cast<const OutputError*>(&error) != nullptr) throw OutputError(message);
  if (dynamic_cast<const DeviceError*>(&error) != nullptr) throw DeviceError(message);
  if (dynamic_cast<const InputError*>(&error) != nullptr) throw InputError(message);
  throw ModelError(message);
}

// Sleeps `seconds`, waking early when a stop is requested.
void nap(const RunnerOptions& options, double seconds) {
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < until && !stop_requested(options)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

// Once a stop is requested, gives the run grace_s seconds; past that it holds the manifest (no append
// is under way or starts), releases every claim and calls on_abandon, which ends the process.
class GraceWatchdog {
 public:
  GraceWatchdog(const RunnerOptions& options, io::ManifestWriter& manifest, io::ClaimStore& claims) {
    if (options.stop == nullptr || options.grace_s < 0.0 || !options.on_abandon) return;
    thread_ = std::thread([this, &options, &manifest, &claims] {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!done_ && !options.stop->load()) wake_.wait_for(lock, std::chrono::milliseconds(50));
      if (done_) return;
      if (wake_.wait_for(lock, std::chrono::duration<double>(options.grace_s), [this] { return done_; })) return;
      log::warn("grace time of " + format_seconds(options.grace_s) +
                " is over: abandoning the images in hand (their claims are released; a re-run renders them)");
      const auto held = manifest.hold();
      claims.release_all();
      options.on_abandon();
    });
  }
  ~GraceWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  GraceWatchdog(const GraceWatchdog&) = delete;
  GraceWatchdog& operator=(const GraceWatchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread thread_;
};

JobPlan plan_with(const job::JobSpec& spec, const std::string& output_dir, const ResumeIndex& index,
                  const std::optional<std::string>& model, bool overwrite, int batch_size, const BatchFor& batch_for,
                  bool group_by_loras, const job::Shard& shard) {
  JobPlan plan;
  plan.manifest_warnings = index.warnings();
  plan.items.reserve(spec.items.size());
  for (size_t i = 0; i < spec.items.size(); ++i) {
    if (!shard.contains(static_cast<int64_t>(i))) {
      plan.items.push_back({&spec.items[i], ItemState::kOtherShard, "another shard's image"});
      continue;
    }
    plan.items.push_back(plan_item(spec.items[i], i, output_dir, overwrite, index, model));
  }
  plan.batches = make_batches(plan.items, batch_size, batch_for, group_by_loras);
  return plan;
}

}  // namespace

int64_t JobPlan::count(ItemState state) const {
  int64_t n = 0;
  for (const PlannedItem& p : items) n += p.state == state ? 1 : 0;
  return n;
}

bool is_finished(const job::RenderItem& item, const std::string& output_dir, const io::ManifestContents& manifest,
                 const std::optional<std::string>& model) {
  const auto ok_lines = last_ok_lines(manifest);
  const auto it = ok_lines.find(item.file);
  return it != ok_lines.end() && records(*it->second, item, model) && is_file(output_path(output_dir, item.file));
}

JobPlan plan_job(const job::JobSpec& spec, const std::string& output_dir, const std::optional<std::string>& model,
                 bool overwrite, int batch_size, const std::function<int(const job::RenderItem&)>& batch_for,
                 bool group_by_loras, const job::Shard& shard) {
  if (batch_size < 1) throw InputError("--batch: must be at least 1, got " + std::to_string(batch_size));
  check_unique_files(spec);
  ResumeIndex index(spec, output_path(output_dir, io::kManifestFileName), model);
  index.refresh();
  return plan_with(spec, output_dir, index, model, overwrite, batch_size, batch_for, group_by_loras, shard);
}

RunSummary run_job(const job::JobSpec& spec, const std::string& output_dir, const RunnerOptions& options,
                   ImageGenerator& generator) {
  const auto start = Clock::now();
  const std::string model = generator.model_description();
  if (options.dry_run) {
    const JobPlan plan = plan_job(spec, output_dir, model, options.overwrite, options.batch_size, options.batch_for,
                                  options.group_by_loras, options.shard);
    RunSummary summary;
    summary.total = static_cast<int64_t>(plan.items.size());
    summary.skipped = plan.count(ItemState::kSkip);
    summary.blocked = plan.count(ItemState::kBlocked);
    summary.other_shard = plan.count(ItemState::kOtherShard);
    summary.not_started = plan.count(ItemState::kRender);
    return summary;
  }
  // Input errors must surface before anything is created.
  if (options.batch_size < 1) throw InputError("--batch: must be at least 1, got " + std::to_string(options.batch_size));
  check_unique_files(spec);
  io::ensure_directory(output_dir);
  const std::string manifest_path = output_path(output_dir, io::kManifestFileName);
  io::ManifestWriter manifest(manifest_path);
  const fs::path state_dir = fs::path(output_dir) / io::kStateDirName;
  RunSummary summary;
  // The claims folder goes with its last worker (one still running keeps it); so does .fluxbatch when empty.
  struct RemoveStateDir {
    const fs::path& dir;
    ~RemoveStateDir() { ::rmdir(dir.c_str()); }
  } remove_state_dir{state_dir};
  {
    io::ClaimStoreOptions claim_options;
    claim_options.lease_s = options.lease_s;
    claim_options.worker = options.worker;
    io::ClaimStore claims((state_dir / "claims").string(), claim_options);
    ResumeIndex index(spec, manifest_path, model, options.session_offset);
    index.refresh();
    remove_stale_temporaries(spec, output_dir, claims);
    const JobPlan plan = plan_with(spec, output_dir, index, model, options.overwrite, options.batch_size,
                                   options.batch_for, options.group_by_loras, options.shard);
    for (const std::string& warning : plan.manifest_warnings) log::warn("skipped unreadable manifest line " + warning);
    summary.total = static_cast<int64_t>(plan.items.size());
    summary.skipped = plan.count(ItemState::kSkip);
    summary.other_shard = plan.count(ItemState::kOtherShard);
    // This run's share: what is left to render, blocked images and PNGs whose line a kill prevented.
    std::vector<size_t> candidates;
    int64_t to_render = 0;
    for (size_t i = 0; i < plan.items.size(); ++i) {
      const PlannedItem& planned = plan.items[i];
      if (planned.state == ItemState::kSkip && !planned.restore_manifest_line) {
        log::debug(planned.item->file + ": " + planned.reason);
        continue;
      }
      if (planned.state == ItemState::kOtherShard) continue;
      candidates.push_back(i);
      to_render += planned.state == ItemState::kRender ? 1 : 0;
    }
    log::info(std::to_string(to_render) + " image(s) to render, " + std::to_string(summary.skipped) +
              " finished earlier, " + std::to_string(plan.count(ItemState::kBlocked)) + " blocked" +
              (options.shard.whole() ? std::string()
                                     : "; shard " + std::to_string(options.shard.index) + "/" +
                                           std::to_string(options.shard.count) + " (" + options.shard.source +
                                           "): " + std::to_string(summary.other_shard) + " image(s) are other shards'"));
    Run run(output_dir, options, generator, manifest, claims, summary, to_render);
    GraceWatchdog watchdog(options, manifest, claims);
    // Decides an image just claimed, with the manifest read up to now: restore or block it, or render it.
    const auto decide = [&](size_t position) -> Claimed {
      const job::RenderItem& item = spec.items[position];
      if (options.overwrite) return Claimed::kRender;
      const std::string path = output_path(output_dir, item.file);
      std::error_code ec;
      if (!fs::exists(path, ec)) return Claimed::kRender;
      const PlannedItem now = plan_item(item, position, output_dir, false, index, model);
      if (now.state == ItemState::kSkip && !now.restore_manifest_line) return Claimed::kDoneElsewhere;
      if (now.restore_manifest_line) {
        run.restore_line(&item, now.reason);
      } else {
        run.record_blocked(&item, now.reason);
      }
      return Claimed::kSettled;
    };
    ClaimedWork work(spec, candidates, claims, index, decide, options.poll_s);
    work.set_group_by_loras(options.group_by_loras);
    // This worker's images not finished (by it or by others); every one is still open or was taken by it.
    const auto left = [&] {
      return work.open_count() + work.taken() - summary.rendered - summary.failed - summary.lost_claims;
    };
    try {
      // Blocked images and lines to restore first, as a single run always did.
      for (size_t c = 0; c < candidates.size(); ++c) {
        if (plan.items[candidates[c]].state != ItemState::kRender) work.take(c);
      }
      if (options.observer != nullptr) {
        options.observer->job_started({summary.total, to_render, summary.skipped, plan.count(ItemState::kBlocked), 0});
      }
      // Images an earlier job rendered are copied from the image cache; the rest are this run's work.
      if (options.image_cache != nullptr) {
        int64_t hits = 0;
        for (size_t c = 0; c < candidates.size() && !stop_requested(options); ++c) {
          if (!work.open(c)) continue;
          const job::RenderItem& item = spec.items[candidates[c]];
          std::optional<std::string> png = options.image_cache->find(item);
          if (!png || work.take(c) != Claimed::kRender) continue;
          run.copy_cached(item, std::move(*png));
          ++hits;
        }
        log::info("image cache: " + std::to_string(hits) + " of " + std::to_string(to_render) +
                  " image(s) found, copied instead of rendered");
      }
      std::vector<PlannedItem> open;  // what is left, as the plan saw it: for prepare() and the batch count
      for (size_t c = 0; c < candidates.size(); ++c) {
        if (work.open(c)) open.push_back(plan.items[candidates[c]]);
      }
      if (!stop_requested(options)) {
        std::vector<const job::RenderItem*> items;
        for (const PlannedItem& planned : open) {
          if (planned.state == ItemState::kRender) items.push_back(planned.item);
        }
        prepare_generator(items, generator);
      }
      // After prepare(): the generator may plan its memory (and so the batch per shape) there.
      const auto cap = [&](const job::RenderItem& item) { return shape_batch(item, options.batch_size, options.batch_for); };
      const auto planned_batches = static_cast<int64_t>(make_batches(open, options.batch_size, options.batch_for, options.group_by_loras).size());
      if (!open.empty()) {
        log::info("rendering " + std::to_string(open.size()) + " image(s) in " + std::to_string(planned_batches) +
                  " batch(es)");
      }
      int64_t number = 0;
      int64_t told_elsewhere = 0;
      bool told_waiting = false;
      while (!stop_requested(options)) {
        const std::vector<const job::RenderItem*> batch = work.next_batch(cap);
        if (options.observer != nullptr && work.done_elsewhere() != told_elsewhere) {
          told_elsewhere = work.done_elsewhere();
          options.observer->done_elsewhere(told_elsewhere);
        }
        if (batch.empty()) {
          if (!work.others_hold_some()) break;
          if (!told_waiting) {
            log::info("waiting for " + std::to_string(work.held()) +
                      " image(s) that other workers hold (taken over if their worker dies)");
            told_waiting = true;
          }
          nap(options, options.poll_s);
          continue;
        }
        told_waiting = false;
        ++number;
        run.render_batch(batch, number, std::max(number, planned_batches));
      }
      run.finish_writes();
    } catch (const Error& e) {
      // The job stops. The images already handed to the output queue are written and recorded first
      // (unless the queue itself failed: then this rethrows that same error, already in hand); the claims
      // of the rest go with the claim store. Then say in the same line what the job leaves behind: the
      // images written are kept (and in the manifest), the rest wait for a re-run (or another worker).
      try {
        run.finish_writes();
      } catch (...) {
      }
      rethrow_with_note(e, "; the job stopped with " + std::to_string(summary.rendered) + " image(s) rendered and " +
                               std::to_string(left()) +
                               " left: fix the cause and run the same command again to resume");
    }
    summary.done_elsewhere = work.done_elsewhere() + summary.lost_claims;
    summary.taken_over = claims.taken_over();
    summary.not_started = left();
    if (summary.taken_over > 0) {
      log::info("claims: " + std::to_string(summary.taken_over) + " image(s) taken over from workers that died");
    }
  }
  summary.interrupted = summary.not_started > 0;
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace fluxbatch::runtime
