// Work on background threads, results committed in submission order: the job runner's PNG encoding
// and atomic writes run on worker threads so the device goes on with the next image at once, while
// each image's manifest line (and the runner's counters) still follow one another in the order the
// images arrived, each after its own PNG is in place. Torch-free.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fluxbatch::runtime {

class OrderedQueue {
 public:
  // threads == 0: submit() runs work and commit on the calling thread before it returns.
  // max_pending_bytes: submit() blocks while the tasks not yet committed hold more than this (a
  // single larger task is let through alone), so host memory stays bounded when writing falls behind.
  OrderedQueue(int threads, int64_t max_pending_bytes);
  ~OrderedQueue();  // finishes what was submitted; errors are dropped (call drain() to see them)
  OrderedQueue(const OrderedQueue&) = delete;
  OrderedQueue& operator=(const OrderedQueue&) = delete;

  // `work` runs on some worker, possibly alongside other tasks' work; it must not throw (an exception
  // escaping it is treated like one from commit). `commit` runs after the commits of every task
  // submitted before, never two at once. `bytes`: what the task holds until its commit ends.
  // After a commit threw, later commits are skipped and submit() / drain() rethrow that exception.
  void submit(int64_t bytes, std::function<void()> work, std::function<void()> commit);
  // Waits until every submitted task is committed (or skipped); rethrows the first commit error.
  void drain();

  int threads() const { return static_cast<int>(workers_.size()); }
  double blocked_seconds() const;     // time submit() and drain() spent waiting
  double work_seconds() const;        // summed over the workers: time spent in work
  int64_t peak_pending_bytes() const; // most bytes held at once by tasks not yet committed

 private:
  struct Task {
    uint64_t seq = 0;
    int64_t bytes = 0;
    std::function<void()> work, commit;
  };
  void run_worker();
  void finish(Task& task, bool ran_work_ok, std::exception_ptr work_error);
  void rethrow_error_locked();

  int64_t max_pending_bytes_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Task> todo_;
  std::vector<std::thread> workers_;
  uint64_t next_seq_ = 0;     // the next submitted task's number
  uint64_t next_commit_ = 0;  // the task whose commit is due
  int64_t pending_bytes_ = 0;
  int64_t peak_pending_bytes_ = 0;
  double blocked_seconds_ = 0.0;
  double work_seconds_ = 0.0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

}  // namespace fluxbatch::runtime
