// Out-of-memory recovery in the job runner: halve the failed chunk, retry, grow back, never lose
// an image. A fake generator runs out of memory above a threshold batch size.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <c10/util/Exception.h>

#include <atomic>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/memory/oom.h"
#include "render_items.h"
#include "fluxbatch/core/error.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::ManifestStatus;
using fluxbatch::job::JobSpec;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::Image;
using fluxbatch::runtime::RunnerOptions;

namespace {

enum class OomKind { kC10, kCublasMessage, kBadAlloc };

// Runs out of memory when a batch holds more than `fits` items (or always for `hopeless`
// prompts); otherwise each image depends only on its seed.
class OomGenerator : public fluxbatch::runtime::ImageGenerator {
 public:
  size_t fits = 1;
  OomKind kind = OomKind::kC10;
  std::string hopeless;                 // a prompt that never fits, even alone
  std::vector<size_t> sizes;            // batch size of every generate() call
  std::vector<int64_t> rendered;        // item indices of the images returned

  std::vector<Image> generate(const std::vector<RenderItem>& batch) override {
    sizes.push_back(batch.size());
    bool fail = batch.size() > fits;
    for (const RenderItem& item : batch) fail = fail || item.prompt == hopeless;
    if (fail) throw_oom(batch.size());
    std::vector<Image> images;
    for (const RenderItem& item : batch) {
      rendered.push_back(item.index);
      Image img;
      img.width = item.params.width;
      img.height = item.params.height;
      img.rgb.assign(size_t(img.width) * img.height * 3, static_cast<uint8_t>(item.params.seed));
      images.push_back(std::move(img));
    }
    return images;
  }
  std::string model_description() const override { return "fake-flux"; }

 private:
  void throw_oom(size_t n) const {
    if (kind == OomKind::kCublasMessage) {
      throw std::runtime_error("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`");
    }
    if (kind == OomKind::kBadAlloc) throw std::bad_alloc();
    TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 2.00 GiB (batch ", n, ")");
  }
};

RenderItem make_item(int64_t index, const std::string& prompt = "a cat", int width = 64) {
  return fluxbatch::test::make_render_item(index, prompt, width, 64, 10 + static_cast<uint64_t>(index));
}

JobSpec job_of(int n) {
  return fluxbatch::test::job_of_items(n, [](int i) { return make_item(i); });
}

std::vector<fluxbatch::io::ManifestEntry> manifest_of(const fs::path& dir) {
  return fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string()).entries;
}

}  // namespace

TEST_CASE("out-of-memory classification", "[memory][oom]") {
  using fluxbatch::runtime::is_out_of_memory;
  using fluxbatch::runtime::is_out_of_memory_message;
  CHECK(is_out_of_memory_message("CUDA out of memory. Tried to allocate 20.00 MiB"));
  CHECK(is_out_of_memory_message("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"));
  CHECK(is_out_of_memory_message("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"));
  CHECK(is_out_of_memory_message("CUDA error: out of memory"));
  CHECK_FALSE(is_out_of_memory_message("CUDA error: an illegal memory access was encountered"));
  CHECK_FALSE(is_out_of_memory_message("shape mismatch"));
  try {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "allocator budget exceeded");
  } catch (const std::exception& e) {
    CHECK(is_out_of_memory(e));  // by type, whatever the message
  }
  CHECK(is_out_of_memory(std::bad_alloc()));
  CHECK_FALSE(is_out_of_memory(std::runtime_error("weights missing")));
  fluxbatch::runtime::release_cached_memory();  // a no-op without CUDA; must not throw
}

TEST_CASE("an out-of-memory chunk is halved and retried; every image is written", "[memory][oom]") {
  for (const OomKind kind : {OomKind::kC10, OomKind::kCublasMessage, OomKind::kBadAlloc}) {
    fluxbatch::test::TempDir dir;
    OomGenerator gen;
    gen.fits = 2;
    gen.kind = kind;
    RunnerOptions options;
    options.batch_size = 8;
    options.grow_after = 2;
    const auto summary = fluxbatch::runtime::run_job(job_of(8), dir.path().string(), options, gen);
    // 8 fails -> 4 fails -> 2, 2 fit -> grow to 4 -> the other 4 fail -> 2, 2 fit (grow again).
    CHECK(gen.sizes == std::vector<size_t>{8, 4, 2, 2, 4, 2, 2});
    CHECK(gen.rendered == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});  // each image once, in order
    CHECK(summary.rendered == 8);
    CHECK(summary.failed == 0);
    CHECK(summary.oom_retries == 3);
    for (int i = 0; i < 8; ++i) CHECK(fs::exists(dir.path() / ("img-" + std::to_string(i) + ".png")));
    const auto entries = manifest_of(dir.path());
    REQUIRE(entries.size() == 8);
    for (const auto& e : entries) {
      CHECK(e.status == ManifestStatus::kOk);
      CHECK(e.batch_size == 2);  // the size that actually rendered it
    }
  }
}

TEST_CASE("a grow-back that does not fit doubles the wait before the next one", "[memory][oom]") {
  fluxbatch::test::TempDir dir;
  OomGenerator gen;
  gen.fits = 1;
  RunnerOptions options;
  options.batch_size = 2;
  options.grow_after = 1;
  const auto summary = fluxbatch::runtime::run_job(job_of(10), dir.path().string(), options, gen);
  // Batches of 2: [0,1] fails -> [0] fits (grow to 2), [1] -> [2,3] fails (wait 2) -> [2], [3] (grow)
  // -> [4,5] fails (wait 4) -> [4], [5], [6], [7] (grow) -> [8,9] fails (wait 8) -> [8], [9].
  // Without the doubling every other batch would fail.
  CHECK(gen.sizes == std::vector<size_t>{2, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1});
  CHECK(summary.rendered == 10);
  CHECK(summary.oom_retries == 4);
}

TEST_CASE("a model that cannot load stops the job instead of failing every item", "[memory][oom]") {
  struct Broken : fluxbatch::runtime::ImageGenerator {
    int calls = 0;
    std::vector<Image> generate(const std::vector<RenderItem>&) override {
      ++calls;
      throw fluxbatch::ModelError("transformer (model.safetensors): missing key 'proj_out.bias'");
    }
    std::string model_description() const override { return "broken"; }
  };
  fluxbatch::test::TempDir dir;
  Broken gen;
  RunnerOptions options;
  options.batch_size = 2;
  CHECK_THROWS_WITH(fluxbatch::runtime::run_job(job_of(6), dir.path().string(), options, gen),
                    ContainsSubstring("missing key 'proj_out.bias'"));
  CHECK(gen.calls == 1);
  for (const auto& e : manifest_of(dir.path())) CHECK(e.status != ManifestStatus::kFailed);  // left to a re-run
}

TEST_CASE("the halved limit carries to later batches of the same shape only", "[memory][oom]") {
  fluxbatch::test::TempDir dir;
  JobSpec spec = job_of(6);
  spec.items.push_back(make_item(6, "wide", 128));
  spec.items.push_back(make_item(7, "wide", 128));
  OomGenerator gen;
  gen.fits = 1;
  RunnerOptions options;
  options.batch_size = 3;
  options.grow_after = 100;  // never grow back in this job
  const auto summary = fluxbatch::runtime::run_job(spec, dir.path().string(), options, gen);
  // Batches [0,1,2] [3,4,5] [6,7]: the first halves 3 -> 2 -> 1; the second starts at 1; the
  // 128-wide batch starts again at the planned size.
  CHECK(gen.sizes == std::vector<size_t>{3, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1});
  CHECK(summary.rendered == 8);
  CHECK(summary.oom_retries == 3);
}

TEST_CASE("an item that runs out of memory alone fails with the reason; the job goes on", "[memory][oom]") {
  fluxbatch::test::TempDir dir;
  JobSpec spec = job_of(4);
  spec.items[1].prompt = "huge";
  OomGenerator gen;
  gen.fits = 4;
  gen.hopeless = "huge";
  RunnerOptions options;
  options.batch_size = 4;
  options.grow_after = 1;
  const auto summary = fluxbatch::runtime::run_job(spec, dir.path().string(), options, gen);
  // [0..3] fails -> [0,1] fails -> [0] ok (grow to 2) -> [1,2] fails -> [1] fails alone -> [2] ok
  // (grow to 2) -> [3] is all that is left.
  CHECK(gen.sizes == std::vector<size_t>{4, 2, 1, 2, 1, 1, 1});
  CHECK(gen.rendered == std::vector<int64_t>{0, 2, 3});
  CHECK(summary.rendered == 3);
  CHECK(summary.failed == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("img-1.png: CUDA out of memory"));
  CHECK_FALSE(fs::exists(dir.path() / "img-1.png"));
  int failed = 0;
  for (const auto& e : manifest_of(dir.path())) {
    if (e.status != ManifestStatus::kFailed) continue;
    ++failed;
    CHECK(e.file == "img-1.png");
    CHECK_THAT(e.error, ContainsSubstring("CUDA out of memory"));
    CHECK_THAT(e.error, !ContainsSubstring("Exception raised from"));  // no C++ backtrace in the manifest
    CHECK(e.batch_size == 1);
  }
  CHECK(failed == 1);
}

TEST_CASE("errors other than out-of-memory stop the job without retrying or failing items", "[memory][oom]") {
  class Broken : public fluxbatch::runtime::ImageGenerator {
   public:
    int calls = 0;
    std::vector<Image> generate(const std::vector<RenderItem>&) override {
      ++calls;
      throw std::runtime_error("CUDA error: an illegal memory access was encountered");
    }
    std::string model_description() const override { return "fake-flux"; }
  } gen;
  fluxbatch::test::TempDir dir;
  RunnerOptions options;
  options.batch_size = 4;
  CHECK_THROWS_AS(fluxbatch::runtime::run_job(job_of(4), dir.path().string(), options, gen), fluxbatch::DeviceError);
  CHECK(gen.calls == 1);
  CHECK(manifest_of(dir.path()).empty());  // nothing recorded failed: a re-run renders all four
}

TEST_CASE("a stop request is honoured between the calls of a split batch", "[memory][oom]") {
  class StopAfterFirstImage : public OomGenerator {
   public:
    std::atomic<bool> stop{false};
    std::vector<Image> generate(const std::vector<RenderItem>& batch) override {
      std::vector<Image> images = OomGenerator::generate(batch);
      stop = true;  // as if Ctrl-C came while the first chunk that fit was rendering
      return images;
    }
  } gen;
  gen.fits = 1;
  fluxbatch::test::TempDir dir;
  RunnerOptions options;
  options.batch_size = 4;
  options.stop = &gen.stop;
  const auto summary = fluxbatch::runtime::run_job(job_of(4), dir.path().string(), options, gen);
  CHECK(gen.sizes == std::vector<size_t>{4, 2, 1});
  CHECK(summary.rendered == 1);
  CHECK(summary.not_started == 3);
  CHECK(summary.interrupted);
}
