#include "fluxbatch/runtime/execution/ordered_queue.h"

#include <algorithm>
#include <chrono>

namespace fluxbatch::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

OrderedQueue::OrderedQueue(int threads, int64_t max_pending_bytes)
    : max_pending_bytes_(std::max<int64_t>(1, max_pending_bytes)) {
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { run_worker(); });
}

OrderedQueue::~OrderedQueue() {
  try {
    drain();
  } catch (...) {  // the caller chose not to look
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void OrderedQueue::rethrow_error_locked() {
  if (error_) std::rethrow_exception(error_);
}

void OrderedQueue::submit(int64_t bytes, std::function<void()> work, std::function<void()> commit) {
  bytes = std::max<int64_t>(0, bytes);
  if (workers_.empty()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      rethrow_error_locked();
      peak_pending_bytes_ = std::max(peak_pending_bytes_, bytes);
    }
    const auto start = Clock::now();
    work();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      work_seconds_ += seconds_since(start);
    }
    try {
      commit();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      throw;
    }
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  rethrow_error_locked();
  const auto start = Clock::now();
  changed_.wait(lock, [&] {
    return error_ || pending_bytes_ == 0 || pending_bytes_ + bytes <= max_pending_bytes_;
  });
  blocked_seconds_ += seconds_since(start);
  rethrow_error_locked();
  pending_bytes_ += bytes;
  peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
  todo_.push_back(Task{next_seq_++, bytes, std::move(work), std::move(commit)});
  lock.unlock();
  changed_.notify_all();
}

void OrderedQueue::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto start = Clock::now();
  changed_.wait(lock, [&] { return next_commit_ == next_seq_; });
  blocked_seconds_ += seconds_since(start);
  rethrow_error_locked();
}

void OrderedQueue::run_worker() {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || !todo_.empty(); });
      if (todo_.empty()) return;  // stopping, nothing left
      task = std::move(todo_.front());
      todo_.pop_front();
    }
    std::exception_ptr work_error;
    const auto start = Clock::now();
    try {
      task.work();
    } catch (...) {
      work_error = std::current_exception();
    }
    const double took = seconds_since(start);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      work_seconds_ += took;
    }
    finish(task, work_error == nullptr, work_error);
  }
}

// Waits for the task's turn, commits it (unless an earlier commit failed), then hands the turn on.
// Only the task whose number is next_commit_ runs, so commits never overlap without holding the lock.
void OrderedQueue::finish(Task& task, bool ran_work_ok, std::exception_ptr work_error) {
  bool skip = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return next_commit_ == task.seq; });
    skip = error_ != nullptr;
    if (!skip && !ran_work_ok) error_ = work_error;
    skip = skip || !ran_work_ok;
  }
  std::exception_ptr commit_error;
  if (!skip) {
    try {
      task.commit();
    } catch (...) {
      commit_error = std::current_exception();
    }
  }
  task.work = nullptr;
  task.commit = nullptr;  // release what the task held before saying it is done
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (commit_error && !error_) error_ = commit_error;
    pending_bytes_ -= task.bytes;
    ++next_commit_;
  }
  changed_.notify_all();
}

double OrderedQueue::blocked_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return blocked_seconds_;
}

double OrderedQueue::work_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return work_seconds_;
}

int64_t OrderedQueue::peak_pending_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_pending_bytes_;
}

}  // namespace fluxbatch::runtime
