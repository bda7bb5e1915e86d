// MemoryMonitor: stage attribution, high-water marks, once-per-stage warnings (with a scripted
// sampler, no thread), and one real run on the CPU counting allocator with its sampling thread.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_allocator.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_monitor.h"
#include "fluxbatch/runtime/memory/memory_probe.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::runtime::MemoryMonitor;
using fluxbatch::runtime::MemorySample;
using fluxbatch::runtime::MonitorOptions;

namespace {

// Returns whatever `now` holds when sampled.
struct FakeSampler {
  MemorySample now;
  int calls = 0;
};

MonitorOptions options(int64_t budget, std::vector<std::string>* warnings) {
  MonitorOptions o;
  o.interval_ms = 0;
  o.budget_bytes = budget;
  o.threshold = 0.9;
  o.warn = [warnings](const std::string& m) { warnings->push_back(m); };
  return o;
}

}  // namespace

TEST_CASE("the monitor attributes samples to the current stage", "[memmon]") {
  FakeSampler fake;
  std::vector<std::string> warnings;
  MemoryMonitor monitor([&] { ++fake.calls; return fake.now; }, options(1000, &warnings));
  fake.now = {100, 150, 5000, 100, 0};
  monitor.sample();  // idle: belongs to no stage
  monitor.set_stage("encode");
  fake.now = {300, 400, 4000, 300, 0};
  monitor.sample();
  monitor.set_stage("denoise");
  fake.now = {600, 700, 3000, 600, 2};
  monitor.sample();
  fake.now = {500, 700, 3500, 600, 2};
  monitor.sample();
  monitor.set_stage("");
  fake.now = {900, 950, 100, 900, 3};
  monitor.sample();  // idle again: no stage sees it, but the retry count does

  const auto report = monitor.report();
  REQUIRE(report.stages.size() == 2);
  CHECK(report.stages[0].stage == "encode");
  CHECK(report.stages[0].peak_allocated == 300);
  CHECK(report.stages[0].peak_reserved == 400);
  CHECK(report.stages[0].min_device_free == 4000);
  CHECK(report.stages[1].stage == "denoise");
  CHECK(report.stages[1].peak_allocated == 600);
  CHECK(report.stages[1].min_device_free == 3000);
  CHECK(report.alloc_retries == 3);
  CHECK(warnings.empty());  // 700 reserved < 900 = 0.9 * 1000
}

TEST_CASE("a spike between samples is caught by the allocator's high-water mark", "[memmon]") {
  FakeSampler fake;
  std::vector<std::string> warnings;
  MemoryMonitor monitor([&] { return fake.now; }, options(0, &warnings));
  fake.now = {100, 100, -1, 100, 0};
  monitor.set_stage("encode");
  fake.now = {120, 200, -1, 180, 0};  // mark rose to 180 during encode
  monitor.set_stage("denoise");
  fake.now = {150, 200, -1, 180, 0};  // denoise never passes the mark set by encode
  monitor.set_stage("decode");
  fake.now = {130, 200, -1, 950, 0};  // a short spike to 950 that no sample saw
  monitor.set_stage("");
  const auto report = monitor.report();
  REQUIRE(report.stages.size() == 3);
  CHECK(report.stages[0].peak_allocated == 180);
  CHECK(report.stages[1].peak_allocated == 150);  // samples only: the mark is encode's
  CHECK(report.stages[2].peak_allocated == 950);
  CHECK(report.stages[2].min_device_free == -1);
}

TEST_CASE("the monitor warns once per stage past the threshold of the budget", "[memmon]") {
  FakeSampler fake;
  std::vector<std::string> warnings;
  MemoryMonitor monitor([&] { return fake.now; }, options(int64_t{1} << 30, &warnings));
  monitor.set_stage("denoise");
  fake.now = {int64_t{950} << 20, int64_t{980} << 20, -1, 0, 0};  // 95.7% of 1 GiB
  monitor.sample();
  monitor.sample();
  monitor.set_stage("decode");
  monitor.sample();
  monitor.set_stage("denoise");  // the same stage again: no second warning
  monitor.sample();
  REQUIRE(warnings.size() == 2);
  CHECK_THAT(warnings[0], ContainsSubstring("denoise uses 980.0 MiB, 96% of the 1.00 GiB budget"));
  CHECK_THAT(warnings[0], ContainsSubstring("threshold 90%"));
  CHECK_THAT(warnings[1], ContainsSubstring("decode"));
  const auto report = monitor.report();
  CHECK(report.stages[0].warned);
  CHECK(report.stages[1].warned);
  CHECK_THAT(fluxbatch::runtime::format_memory_report(report),
             ContainsSubstring("memory: denoise peak 950.0 MiB allocated, 980.0 MiB reserved (96% of the budget)"));
}

TEST_CASE("monitor options are checked", "[memmon]") {
  const auto sampler = [] { return MemorySample{}; };
  MonitorOptions bad;
  bad.interval_ms = -1;
  CHECK_THROWS_AS(MemoryMonitor(sampler, bad), fluxbatch::InputError);
  bad.interval_ms = 10;
  bad.threshold = 1.5;
  CHECK_THROWS_WITH(MemoryMonitor(sampler, bad), ContainsSubstring("--monitor-threshold"));
}

TEST_CASE("the monitor's thread samples the CPU counting allocator", "[memmon]") {
  fluxbatch::runtime::CpuMemoryBudget budget(int64_t{64} << 20);
  std::vector<std::string> warnings;
  MonitorOptions o = options(budget.budget_bytes(), &warnings);
  o.interval_ms = 2;
  MemoryMonitor monitor(fluxbatch::runtime::cpu_memory_sampler(budget), o);
  monitor.start();
  monitor.set_stage("denoise");
  {
    const at::Tensor big = at::ones({int64_t{15} << 20}, at::kFloat);  // 60 MiB: past 90% of 64 MiB
    std::this_thread::sleep_for(std::chrono::milliseconds(30));       // the thread samples it
    CHECK(big.sum().item<float>() > 0);
  }
  monitor.set_stage("decode");
  monitor.stop();
  const auto report = monitor.report();
  REQUIRE(report.stages.size() == 2);
  CHECK(report.stages[0].peak_allocated >= int64_t{60} << 20);
  CHECK(report.stages[0].samples > 3);  // the thread's, not only the two stage changes
  CHECK(report.stages[0].warned);
  CHECK(report.stages[1].peak_allocated < int64_t{60} << 20);
  REQUIRE(warnings.size() == 1);
  CHECK_THAT(warnings[0], ContainsSubstring("denoise uses"));
}

TEST_CASE("on CUDA the budget caps the allocator with expandable segments and the sampler reads it", "[cuda][memmon]") {
  if (!at::hasCUDA()) SKIP("no CUDA device");
  const auto setup = fluxbatch::runtime::configure_allocator();
  INFO(setup.describe());
  const auto gpus = fluxbatch::runtime::probe_gpus();
  REQUIRE_FALSE(gpus.empty());
  const auto sampler = fluxbatch::runtime::cuda_memory_sampler(0);
  const MemorySample before = sampler();
  CHECK(before.device_free > 0);
  fluxbatch::runtime::cap_cuda_memory(0, before.reserved + (int64_t{3} << 29));  // 1.5 GiB more than now
  {
    const at::Tensor fits = at::empty({int64_t{256} << 20}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    const MemorySample during = sampler();
    CHECK(during.allocated >= before.allocated + (int64_t{1} << 30));
    CHECK(during.peak_allocated >= during.allocated);
    CHECK_THROWS_AS(at::empty({int64_t{512} << 20}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA)),
                    c10::OutOfMemoryError);  // 2 GiB more is past the cap
  }
  fluxbatch::runtime::cap_cuda_memory(0, gpus[0].total_bytes);  // later tests get the whole device back
  CHECK(sampler().alloc_retries >= before.alloc_retries);
}
