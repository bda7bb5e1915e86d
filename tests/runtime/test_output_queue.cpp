// The output queue behind the runner's background writes: work in parallel, commits in submission
// order and one at a time, bounded memory, and a failed commit stopping everything after it.
#include <catch2/catch_test_macros.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "fluxbatch/runtime/execution/ordered_queue.h"

using fluxbatch::runtime::OrderedQueue;

TEST_CASE("commits run in submission order, one at a time, whatever order the work finishes in", "[runner][queue]") {
  OrderedQueue queue(4, 1 << 20);
  std::mutex mutex;
  std::vector<int> committed;
  std::atomic<int> inside{0}, most_inside{0}, working{0}, most_working{0};
  for (int i = 0; i < 40; ++i) {
    queue.submit(
        10,
        [&, i] {
          const int now = ++working;
          for (int seen = most_working.load(); now > seen && !most_working.compare_exchange_weak(seen, now);) {
          }
          // Early tasks take longest, so later ones finish their work first.
          std::this_thread::sleep_for(std::chrono::milliseconds((40 - i) % 7));
          --working;
        },
        [&, i] {
          const int now = ++inside;
          most_inside = std::max(most_inside.load(), now);
          {
            std::lock_guard<std::mutex> lock(mutex);
            committed.push_back(i);
          }
          --inside;
        });
  }
  queue.drain();
  std::vector<int> expected(40);
  for (int i = 0; i < 40; ++i) expected[i] = i;
  CHECK(committed == expected);
  CHECK(most_inside.load() == 1);
  CHECK(most_working.load() > 1);  // the work did run side by side
  CHECK(queue.threads() == 4);
  CHECK(queue.work_seconds() > 0.0);
}

TEST_CASE("submit blocks while the queued bytes would pass the limit", "[runner][queue]") {
  OrderedQueue queue(2, 100);
  std::atomic<bool> release{false};
  for (int i = 0; i < 6; ++i) {
    queue.submit(
        40,
        [&] {
          while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        },
        [] {});
    if (i == 1) {
      // Two tasks (80 bytes) are queued: a third would make 120. Let them go a little later.
      std::thread([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        release = true;
      }).detach();
    }
  }
  queue.drain();
  CHECK(queue.peak_pending_bytes() <= 100);
  CHECK(queue.peak_pending_bytes() >= 80);
  CHECK(queue.blocked_seconds() > 0.02);
  // A task larger than the limit still goes through, alone.
  queue.submit(500, [] {}, [] {});
  queue.drain();
  CHECK(queue.peak_pending_bytes() == 500);
}

TEST_CASE("a failed commit skips every later commit and resurfaces in submit and drain", "[runner][queue]") {
  for (const int threads : {0, 3}) {
    INFO("threads " << threads);
    OrderedQueue queue(threads, 1 << 20);
    std::vector<int> committed;
    bool thrown = false;
    try {
      for (int i = 0; i < 10; ++i) {
        queue.submit(1, [] {}, [&, i] {
          if (i == 3) throw std::runtime_error("disk full");
          committed.push_back(i);
        });
      }
    } catch (const std::runtime_error& e) {
      thrown = true;
      CHECK(std::string(e.what()) == "disk full");
    }
    CHECK_THROWS_AS(queue.drain(), std::runtime_error);
    CHECK(committed == std::vector<int>{0, 1, 2});
    CHECK_THROWS_AS(queue.submit(1, [] {}, [] {}), std::runtime_error);
    // Inline, the failing commit throws out of its own submit().
    if (threads == 0) CHECK(thrown);
  }
}

TEST_CASE("without threads the work and the commit run before submit returns", "[runner][queue]") {
  OrderedQueue queue(0, 1);
  std::vector<std::string> log;
  queue.submit(1000, [&] { log.push_back("work"); }, [&] { log.push_back("commit"); });
  CHECK(log == std::vector<std::string>{"work", "commit"});
  CHECK(queue.threads() == 0);
}
