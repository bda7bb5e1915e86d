// The images one worker may still render, taken batch by batch in render order through claims
// (io::ClaimStore), so any number of workers on one output directory split a job with no image
// rendered twice and none left out. After claiming an image the worker reads the manifest's new
// lines (ResumeIndex::refresh) before deciding anything: another worker may have finished it since
// this one planned (a worker releases its claim only after writing the image's line), and any line
// written since this worker planned means exactly that. Images other live
// workers hold are looked at again every poll interval; a worker is done when each of its images is
// finished, by itself or by others. Torch-free.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fluxbatch/io/claim_store.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/resume_index.h"

namespace fluxbatch::runtime {

enum class Claimed {
  kRender,         // ours to render (the claim stays held until its line is written)
  kSettled,        // the decide callback took it over (restores or records its line, then releases it)
  kDoneElsewhere,  // another worker finished it (claim released)
  kHeld,           // a live worker holds it
};

class ClaimedWork {
 public:
  // Decides an image just claimed (the index is fresh): kRender, kSettled or kDoneElsewhere.
  using Decide = std::function<Claimed(size_t position)>;
  // The most images per batch for an item's shape.
  using Cap = std::function<int(const job::RenderItem&)>;

  // `candidates`: positions in spec.items, in render order, that this worker may render.
  ClaimedWork(const job::JobSpec& spec, std::vector<size_t> candidates, io::ClaimStore& claims, ResumeIndex& index,
              Decide decide, double poll_s = 1.0);

  // Claims one image now (a blocked or interrupted image settled before rendering starts).
  Claimed take(size_t candidate);
  // The next batch, claimed: the first image that can be claimed, then the later ones of the same
  // shape (width, height, steps, max_sequence_length) and priority, up to cap(first). Empty when no
  // image can be claimed now (see others_hold_some).
  std::vector<const job::RenderItem*> next_batch(const Cap& cap);
  // Batches of one LoRA set only (merged LoRAs: RunnerOptions::group_by_loras).
  void set_group_by_loras(bool on) { group_by_loras_ = on; }
  // Images of this worker's share that other live workers hold: wait, then call next_batch again.
  bool others_hold_some() const { return held_ > 0; }

  size_t candidates() const { return candidates_.size(); }
  // Candidate `c` is neither taken by this worker nor known finished.
  bool open(size_t c) const { return state_[c] == kOpen || state_[c] == kHeldElsewhere; }
  int64_t open_count() const;
  int64_t taken() const { return taken_; }  // images taken to render (kRender)
  int64_t held() const { return held_; }    // images other live workers hold, as last seen
  int64_t done_elsewhere() const { return done_elsewhere_; }

 private:
  enum State : uint8_t { kOpen, kHeldElsewhere, kTaken, kDone };
  Claimed try_take(size_t candidate);
  bool finished_elsewhere(size_t position) const;

  const job::JobSpec& spec_;
  std::vector<size_t> candidates_;
  io::ClaimStore& claims_;
  ResumeIndex& index_;
  Decide decide_;
  double poll_s_;
  std::vector<uint8_t> state_;
  std::vector<double> held_since_;  // last attempt at a held image (seconds, steady clock); sparse use
  size_t cursor_ = 0;               // candidates before it are taken or done
  int64_t held_ = 0;
  int64_t done_elsewhere_ = 0;
  int64_t taken_ = 0;
  bool group_by_loras_ = false;
};

// Same shape and priority (and with group_by_loras, the same LoRA set): may share a generate() call.
bool batchable(const job::RenderItem& a, const job::RenderItem& b, bool group_by_loras = false);

}  // namespace fluxbatch::runtime
