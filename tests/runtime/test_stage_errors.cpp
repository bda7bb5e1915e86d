// What stops a job and what it leaves behind: errors inside a stage that are not out of memory, disk
// faults while writing, files deleted under a running job. Every case is followed by a re-run that
// must finish the job exactly.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <c10/util/Exception.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/io/output_fault.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "io/write_faults.h"
#include "render_items.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::EndsWith;
using fluxbatch::io::ManifestStatus;
using fluxbatch::job::JobSpec;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::Image;
using fluxbatch::runtime::ImageSink;
using fluxbatch::runtime::RunnerOptions;

namespace {

JobSpec job_of(int n) {
  return fluxbatch::test::job_of_items(
      n, [](int i) { return fluxbatch::test::make_render_item(i, "prompt " + std::to_string(i), 64, 64, 10 + i); });
}

Image image_for(const RenderItem& item) {
  Image img;
  img.width = item.params.width;
  img.height = item.params.height;
  img.rgb.assign(size_t(img.width) * img.height * 3, static_cast<uint8_t>(item.params.seed));
  return img;
}

// Delivers images one by one; `before(call, index)` runs before each image (and may throw or meddle).
class ScriptedGenerator : public fluxbatch::runtime::ImageGenerator {
 public:
  std::function<void(int call, size_t index)> before;
  std::function<void()> on_prepare;
  int calls = 0;
  int images = 0;

  void prepare(const std::vector<const RenderItem*>&) override {
    if (on_prepare) on_prepare();
  }
  std::vector<Image> generate(const std::vector<RenderItem>& batch) override {
    std::vector<Image> out;
    generate_each(batch, [&](size_t, Image&& img) { out.push_back(std::move(img)); });
    return out;
  }
  void generate_each(const std::vector<RenderItem>& batch, const ImageSink& on_image) override {
    const int call = calls++;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (before) before(call, i);
      ++images;
      on_image(i, image_for(batch[i]));
    }
  }
  std::string model_description() const override { return "fake-flux"; }
};

class InjectedFault {
 public:
  explicit InjectedFault(const char* spec) { fluxbatch::io::detail::set_write_fault(spec); }
  ~InjectedFault() { fluxbatch::io::detail::set_write_fault(nullptr); }
};

fluxbatch::io::ManifestContents manifest_of(const fs::path& dir) {
  return fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string());
}

std::vector<std::string> temporaries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().find(".tmp-") != std::string::npos) out.push_back(e.path().filename().string());
  }
  return out;
}

// PNGs written on the generator's thread, in order, so that a fault injected before an image hits that
// image's write and no other (the output queue's threads have their own test below).
RunnerOptions batches_of(int n) {
  RunnerOptions options;
  options.batch_size = n;
  options.write_threads = 0;
  return options;
}

std::set<std::string> pngs_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".png") out.insert(e.path().filename().string());
  }
  return out;
}

// A re-run with a well-behaved generator: renders exactly `expected` images and finishes the job.
void rerun_finishes(const JobSpec& spec, const fs::path& dir, int64_t expected, int64_t restored = 0) {
  ScriptedGenerator fine;
  const auto summary = fluxbatch::runtime::run_job(spec, dir.string(), batches_of(2), fine);
  CHECK(summary.rendered == expected);
  CHECK(summary.restored == restored);
  CHECK(summary.failed == 0);
  CHECK(summary.rendered + summary.skipped == static_cast<int64_t>(spec.items.size()));
  const auto contents = manifest_of(dir);
  CHECK(contents.skipped.empty());
  for (const RenderItem& item : spec.items) CHECK(fs::exists(dir / item.file));
}

}  // namespace

TEST_CASE("a non-memory error inside a stage stops the job; the images written stay and are in the manifest",
          "[runner][stage_errors]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(5);
  ScriptedGenerator gen;
  gen.before = [](int call, size_t index) {
    if (call == 1 && index == 1) throw std::runtime_error("index out of range in self");
  };
  try {
    fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), gen);
    FAIL("the job did not stop");
  } catch (const fluxbatch::ModelError& e) {
    CHECK(std::string(e.what()) ==
          "rendering img-2.png, img-3.png: index out of range in self; the job stopped with 3 image(s) rendered "
          "and 2 left: fix the cause and run the same command again to resume");
  }
  CHECK(gen.calls == 2);  // no retry, no further batch
  const auto contents = manifest_of(dir.path());
  REQUIRE(contents.entries.size() == 3);
  for (const auto& e : contents.entries) CHECK(e.status == ManifestStatus::kOk);  // nothing recorded failed
  rerun_finishes(spec, dir.path(), 2);
}

TEST_CASE("a libtorch error stops the job without its C++ backtrace; CUDA faults are device errors",
          "[runner][stage_errors]") {
  fluxbatch::test::TempDir dir;
  ScriptedGenerator gen;
  gen.before = [](int, size_t) { TORCH_CHECK(false, "expected scalar type Float but found\nBFloat16"); };
  try {
    fluxbatch::runtime::run_job(job_of(1), dir.path().string(), batches_of(1), gen);
    FAIL("the job did not stop");
  } catch (const fluxbatch::ModelError& e) {
    const std::string message = e.what();
    CHECK_THAT(message, ContainsSubstring("rendering img-0.png: expected scalar type Float but found BFloat16"));
    CHECK_THAT(message, !ContainsSubstring("Exception raised from") && !ContainsSubstring("frame #"));
    CHECK(message.find('\n') == std::string::npos);
  }
  ScriptedGenerator cuda;
  cuda.before = [](int, size_t) { throw std::runtime_error("CUDA error: an illegal memory access was encountered"); };
  CHECK_THROWS_AS(fluxbatch::runtime::run_job(job_of(1), dir.path().string(), batches_of(1), cuda),
                  fluxbatch::DeviceError);
  // Invalid input reaching a stage means the model could not take it: exit 3, not "invalid input".
  ScriptedGenerator input;
  input.before = [](int, size_t) { throw fluxbatch::InputError("encoder_hidden_states must be [1, L, 40]"); };
  CHECK_THROWS_AS(fluxbatch::runtime::run_job(job_of(1), dir.path().string(), batches_of(1), input),
                  fluxbatch::ModelError);
}

TEST_CASE("user_message: one line, the c10 backtrace only with -v", "[runner][stage_errors]") {
  try {
    TORCH_CHECK(false, "first line\nsecond line");
  } catch (const c10::Error& e) {
    CHECK(std::string(e.what()).find("Exception raised from") != std::string::npos);
    CHECK(fluxbatch::runtime::user_message(e, false) == "first line second line");
    CHECK_THAT(fluxbatch::runtime::user_message(e, true), ContainsSubstring("Exception raised from"));
  }
  // fluxbatch's own messages are kept as written (a job file's problems come one per line).
  const fluxbatch::InputError job("job.json:1:2: a\njob.json:3:4: b");
  CHECK(fluxbatch::runtime::user_message(job, false) == "job.json:1:2: a\njob.json:3:4: b");
}

TEST_CASE("prepare: a non-memory error stops the job before any image, out of memory does not",
          "[runner][stage_errors]") {
  fluxbatch::test::TempDir dir;
  ScriptedGenerator broken;
  broken.on_prepare = [] { throw std::runtime_error("index out of range in self"); };
  CHECK_THROWS_WITH(fluxbatch::runtime::run_job(job_of(3), dir.path().string(), batches_of(2), broken),
                    ContainsSubstring("preparing the job: index out of range in self; the job stopped with 0 image(s)"));
  CHECK(broken.calls == 0);
  ScriptedGenerator oom;
  oom.on_prepare = [] { throw std::runtime_error("CUDA out of memory. Tried to allocate 2.00 GiB"); };
  const auto summary = fluxbatch::runtime::run_job(job_of(3), dir.path().string(), batches_of(2), oom);
  CHECK(summary.rendered == 3);
}

TEST_CASE("disk full writing a PNG stops the job: written images kept, no temporary file, resume exact",
          "[runner][stage_errors][faults]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(4);
  ScriptedGenerator gen;
  std::unique_ptr<InjectedFault> full;
  gen.before = [&](int call, size_t index) {
    if (call == 0 && index == 1) full = std::make_unique<InjectedFault>("enospc-after:100");  // mid-PNG
  };
  try {
    fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), gen);
    FAIL("the job did not stop");
  } catch (const fluxbatch::io::OutputFault& e) {
    CHECK_THAT(std::string(e.what()), ContainsSubstring("cannot write " + (dir / "img-1.png").string()) &&
                                          ContainsSubstring("No space left on device") &&
                                          EndsWith("the job stopped with 1 image(s) rendered and 3 left: fix the "
                                                   "cause and run the same command again to resume"));
  }
  full.reset();
  CHECK(gen.calls == 1);
  CHECK(fs::exists(dir / "img-0.png"));
  CHECK_FALSE(fs::exists(dir / "img-1.png"));
  CHECK(temporaries(dir.path()).empty());
  const auto contents = manifest_of(dir.path());
  REQUIRE(contents.entries.size() == 1);
  CHECK(contents.entries[0].file == "img-0.png");
  rerun_finishes(spec, dir.path(), 3);
}

TEST_CASE("disk full writing the manifest line stops the job; the image is kept and its line restored later",
          "[runner][stage_errors][faults]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(3);
  // The PNG of item 0 alone, to know how many bytes it takes.
  fluxbatch::test::TempDir probe;
  ScriptedGenerator sizing;
  fluxbatch::runtime::run_job(job_of(1), probe.path().string(), batches_of(1), sizing);
  const auto png_bytes = fs::file_size(probe / "img-0.png");
  ScriptedGenerator gen;
  std::unique_ptr<InjectedFault> full;
  const std::string budget = "enospc-after:" + std::to_string(png_bytes + 7);  // the PNG, then 7 bytes of its line
  gen.before = [&](int call, size_t index) {
    if (call == 0 && index == 0) full = std::make_unique<InjectedFault>(budget.c_str());
  };
  CHECK_THROWS_WITH(fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(3), gen),
                    ContainsSubstring("manifest " + (dir / "manifest.jsonl").string() + ": write failed: No space"));
  full.reset();
  CHECK(fs::exists(dir / "img-0.png"));
  CHECK(fluxbatch::test::read_file(dir / "manifest.jsonl").empty());  // no torn line
  CHECK(temporaries(dir.path()).empty());
  rerun_finishes(spec, dir.path(), 2, /*restored=*/1);
  CHECK(manifest_of(dir.path()).entries.size() == 3);
}

TEST_CASE("a PNG deleted under a running job is rendered again by the next run, and only it",
          "[runner][stage_errors][faults]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(4);
  ScriptedGenerator gen;
  gen.before = [&](int call, size_t index) {
    if (call == 1 && index == 0) fs::remove(dir / "img-0.png");
  };
  const auto summary = fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), gen);
  CHECK(summary.rendered == 4);
  CHECK_FALSE(fs::exists(dir / "img-0.png"));
  ScriptedGenerator again;
  const auto second = fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), again);
  CHECK(second.rendered == 1);
  CHECK(second.skipped == 3);
  CHECK(again.images == 1);
  CHECK(fs::exists(dir / "img-0.png"));
}

TEST_CASE("a manifest deleted under a running job: later lines go to a new one, the earlier are restored",
          "[runner][stage_errors][faults]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(4);
  ScriptedGenerator gen;
  gen.before = [&](int call, size_t index) {
    if (call == 1 && index == 0) fs::remove(dir / "manifest.jsonl");
  };
  CHECK(fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), gen).rendered == 4);
  CHECK(manifest_of(dir.path()).entries.size() == 2);
  ScriptedGenerator again;
  const auto second = fluxbatch::runtime::run_job(spec, dir.path().string(), batches_of(2), again);
  CHECK(second.rendered == 0);
  CHECK(second.restored == 2);
  CHECK(again.images == 0);
  CHECK(manifest_of(dir.path()).entries.size() == 4);
}

TEST_CASE("with background PNG writers, disk full stops the job the same way: what is on disk is kept, resume exact",
          "[runner][stage_errors][faults]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(6);
  RunnerOptions threaded = batches_of(2);
  threaded.write_threads = 2;
  ScriptedGenerator gen;
  std::unique_ptr<InjectedFault> full;
  // From the second call on the disk takes 100 more bytes: the images of the first call may still be on
  // the writers' threads then, so which of them make it is a race; what the job leaves must be right anyway.
  gen.before = [&](int call, size_t index) {
    if (call == 1 && index == 0) full = std::make_unique<InjectedFault>("enospc-after:100");
  };
  std::string message;
  try {
    fluxbatch::runtime::run_job(spec, dir.path().string(), threaded, gen);
    FAIL("the job did not stop");
  } catch (const fluxbatch::io::OutputFault& e) {
    message = e.what();
  }
  full.reset();
  INFO(message);
  CHECK_THAT(message, ContainsSubstring("No space left on device"));
  CHECK(message.find('\n') == std::string::npos);
  const std::set<std::string> on_disk = pngs_in(dir.path());
  CHECK(on_disk.size() <= 2);  // at most the first call's images; nothing after the disk filled
  // The count covers the images recorded; one whose PNG a writer finished just after another writer hit the
  // full disk may be on disk too (its line never written: the re-run adopts it).
  long rendered = -1, left = -1;
  const size_t note = message.find("the job stopped with ");
  REQUIRE(note != std::string::npos);
  REQUIRE(std::sscanf(message.c_str() + note, "the job stopped with %ld image(s) rendered and %ld left", &rendered,
                      &left) == 2);
  CHECK(rendered + left == 6);
  CHECK(rendered <= static_cast<long>(on_disk.size()));
  CHECK_THAT(message, EndsWith(" left: fix the cause and run the same command again to resume"));
  CHECK(temporaries(dir.path()).empty());
  // Every manifest line has its PNG; a PNG whose line the full disk refused is restored by the re-run.
  const auto contents = manifest_of(dir.path());
  for (const auto& e : contents.entries) {
    CHECK(e.status == ManifestStatus::kOk);
    CHECK(on_disk.count(e.file) == 1);
  }
  rerun_finishes(spec, dir.path(), 6 - static_cast<int64_t>(on_disk.size()),
                 static_cast<int64_t>(on_disk.size() - contents.entries.size()));
  CHECK(manifest_of(dir.path()).entries.size() == 6);
}
