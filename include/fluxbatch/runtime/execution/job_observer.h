// What the job runner tells the outside world while it works (progress displays, JSON events for
// wrappers): the plan, each batch as it starts and ends, each image as it is committed (PNG renamed
// into place and its manifest line written). Torch-free. Calls come from the runner's thread and,
// for images, from the output writer's threads, one at a time (commits are serialised).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::runtime {

struct JobStartEvent {
  int64_t total = 0;      // items in the job
  int64_t to_render = 0;  // this run's work
  int64_t skipped = 0;    // finished earlier
  int64_t blocked = 0;
  int64_t batches = 0;    // planned batches (an out-of-memory split adds chunks, not batches)
};

struct BatchEvent {
  int64_t number = 0;   // 1-based among the planned batches
  int64_t batches = 0;  // planned batches
  size_t images = 0;    // images in this generate call
  int width = 0, height = 0, steps = 0;
  double seconds = 0.0;  // batch_finished only: the call's wall time
};

struct ImageEvent {
  const job::RenderItem* item = nullptr;
  std::string path;      // where the PNG is (output_dir / item->file)
  bool ok = true;
  bool cached = false;   // copied from the image cache instead of rendered
  std::string error;     // why it failed
  double generate_s = 0.0;
  double write_s = 0.0;
  int64_t done = 0;       // images of this run committed so far, this one included (ok or failed)
  int64_t to_render = 0;  // JobStartEvent::to_render
};

class JobObserver {
 public:
  virtual ~JobObserver() = default;
  virtual void job_started(const JobStartEvent& /*event*/) {}
  virtual void batch_started(const BatchEvent& /*event*/) {}
  virtual void batch_finished(const BatchEvent& /*event*/) {}
  virtual void image_finished(const ImageEvent& /*event*/) {}
  // Images of this run's work that other workers sharing the output directory finished so far.
  virtual void done_elsewhere(int64_t /*images*/) {}
};

}  // namespace fluxbatch::runtime
