// The runner's side of stage-major execution, with fake generators: prepare() once with every item
// to render, each image written the moment generate_each() hands it over, an out-of-memory error
// after some images retries only the rest, and a killed run's leftovers (a PNG without its
// manifest line, temporary files) are recovered without rendering anything twice.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <c10/util/Exception.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "render_items.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::ManifestStatus;
using fluxbatch::job::JobSpec;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::Image;
using fluxbatch::runtime::ImageSink;
using fluxbatch::runtime::RunnerOptions;

namespace {

RenderItem make_item(int64_t index, const std::string& prompt) {
  return fluxbatch::test::make_render_item(index, prompt, 32, 32, 200 + static_cast<uint64_t>(index));
}

JobSpec job_of(int n) {
  return fluxbatch::test::job_of_items(n, [](int i) { return make_item(i, "prompt " + std::to_string(i % 2)); });
}

Image image_for(const RenderItem& item) {
  Image img;
  img.width = item.params.width;
  img.height = item.params.height;
  img.rgb.assign(size_t(img.width) * img.height * 3, static_cast<uint8_t>(item.params.seed));
  return img;
}

// Streams images; checks at each hand-over that every earlier image of the call is already on disk.
// Runs out of memory at image `oom_at` of any call with more than `fits` items.
class StreamingGenerator : public fluxbatch::runtime::ImageGenerator {
 public:
  fs::path dir;
  size_t fits = 100;
  size_t oom_at = 0;
  std::vector<std::vector<int64_t>> prepared;  // item indices of each prepare()
  std::vector<std::vector<int64_t>> calls;     // item indices of each generate_each()
  int written_before_next = 0;                 // images found on disk before the next one was handed over

  void prepare(const std::vector<const RenderItem*>& items) override {
    prepared.emplace_back();
    for (const RenderItem* item : items) prepared.back().push_back(item->index);
  }
  std::vector<Image> generate(const std::vector<RenderItem>&) override {
    FAIL("the runner renders through generate_each");
    return {};
  }
  void generate_each(const std::vector<RenderItem>& batch, const ImageSink& on_image) override {
    calls.emplace_back();
    for (const RenderItem& item : batch) calls.back().push_back(item.index);
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch.size() > fits && i == oom_at) {
        TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory (fake, image ", i, ")");
      }
      if (i > 0 && fs::exists(dir / batch[i - 1].file)) ++written_before_next;
      on_image(i, image_for(batch[i]));
    }
  }
  std::string model_description() const override { return "fake-flux"; }
};

std::map<std::string, int> ok_lines(const fs::path& dir) {
  std::map<std::string, int> out;
  for (const auto& e : fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string()).entries) {
    if (e.status == ManifestStatus::kOk) ++out[e.file];
  }
  return out;
}

}  // namespace

TEST_CASE("prepare sees every item to render once; images are written as they arrive", "[runner][stages]") {
  fluxbatch::test::TempDir dir;
  StreamingGenerator gen;
  gen.dir = dir.path();
  RunnerOptions options;
  options.batch_size = 3;
  options.write_threads = 0;  // written on the generator's thread: on disk before the next image comes
  const JobSpec spec = job_of(5);
  fluxbatch::runtime::run_job(spec, dir.path().string(), options, gen);
  REQUIRE(gen.prepared.size() == 1);
  CHECK(gen.prepared[0] == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(gen.calls == std::vector<std::vector<int64_t>>{{0, 1, 2}, {3, 4}});
  CHECK(gen.written_before_next == 3);  // images 0, 1 and 3 were on disk before 1, 2 and 4 came

  // A second run renders nothing, so it prepares nothing.
  StreamingGenerator again;
  again.dir = dir.path();
  fluxbatch::runtime::run_job(spec, dir.path().string(), options, again);
  CHECK(again.prepared.empty());
  CHECK(again.calls.empty());
}

TEST_CASE("out of memory after some images of a call retries only the others", "[runner][stages][oom]") {
  fluxbatch::test::TempDir dir;
  StreamingGenerator gen;
  gen.dir = dir.path();
  gen.fits = 1;
  gen.oom_at = 1;  // image 0 arrives, then the call runs out of memory
  RunnerOptions options;
  options.batch_size = 4;
  options.grow_after = 100;
  const auto summary = fluxbatch::runtime::run_job(job_of(4), dir.path().string(), options, gen);
  // 0 arrives; 1, 2, 3 are left: at batch 2, 1 arrives and 2 fails; then 2 and 3 alone.
  CHECK(gen.calls == std::vector<std::vector<int64_t>>{{0, 1, 2, 3}, {1, 2}, {2}, {3}});
  CHECK(summary.rendered == 4);
  CHECK(summary.failed == 0);
  CHECK(summary.oom_retries == 2);
  for (const auto& [file, count] : ok_lines(dir.path())) CHECK(count == 1);
  CHECK(ok_lines(dir.path()).size() == 4);
}

TEST_CASE("a PNG whose manifest line a kill prevented is adopted, not rendered again", "[runner][stages]") {
  fluxbatch::test::TempDir dir;
  const JobSpec spec = job_of(3);
  StreamingGenerator first;
  first.dir = dir.path();
  fluxbatch::runtime::run_job(spec, dir.path().string(), {}, first);
  // As if killed between img-2.png's rename and its manifest append, and during img-1's write.
  const fs::path manifest = dir / fluxbatch::io::kManifestFileName;
  std::string text = fluxbatch::test::read_file(manifest);
  text = text.substr(0, text.rfind('\n', text.size() - 2) + 1);  // drop the last line (img-2)
  fluxbatch::test::write_file(manifest, text);
  fluxbatch::test::write_file(dir / ".img-1.png.tmp-999-1", "half a png");
  fluxbatch::test::write_file(dir / ".unrelated.tmp-999-1", "not ours");

  const auto plan = fluxbatch::runtime::plan_job(spec, dir.path().string(), std::string("fake-flux"), false, 1);
  CHECK(plan.items[2].state == fluxbatch::runtime::ItemState::kSkip);
  CHECK(plan.items[2].restore_manifest_line);
  CHECK_THAT(plan.items[2].reason, ContainsSubstring("interrupted run"));
  // Another model's PNG is not this item's.
  CHECK(fluxbatch::runtime::plan_job(spec, dir.path().string(), std::string("other"), false, 1).items[2].state ==
        fluxbatch::runtime::ItemState::kBlocked);

  StreamingGenerator second;
  second.dir = dir.path();
  const auto summary = fluxbatch::runtime::run_job(spec, dir.path().string(), {}, second);
  CHECK(second.calls.empty());
  CHECK(summary.skipped == 3);
  CHECK(summary.restored == 1);
  CHECK(summary.blocked == 0);
  CHECK(ok_lines(dir.path()) == std::map<std::string, int>{{"img-0.png", 1}, {"img-1.png", 1}, {"img-2.png", 1}});
  CHECK_FALSE(fs::exists(dir / ".img-1.png.tmp-999-1"));
  CHECK(fs::exists(dir / ".unrelated.tmp-999-1"));

  // A PNG with other metadata (another seed) stays blocked.
  JobSpec changed = spec;
  changed.items[2].params.seed += 1;
  fs::remove(manifest);
  CHECK(fluxbatch::runtime::plan_job(changed, dir.path().string(), std::nullopt, false, 1).items[2].state ==
        fluxbatch::runtime::ItemState::kBlocked);
}

TEST_CASE("background writes keep the manifest in arrival order, each line after its PNG", "[runner][stages]") {
  // Hands each batch's images over in reverse order.
  struct Reversed : StreamingGenerator {
    void generate_each(const std::vector<RenderItem>& batch, const ImageSink& on_image) override {
      for (size_t i = batch.size(); i-- > 0;) on_image(i, image_for(batch[i]));
    }
  };
  fluxbatch::test::TempDir dir;
  Reversed gen;
  gen.dir = dir.path();
  RunnerOptions options;
  options.batch_size = 4;
  options.write_threads = 3;
  options.write_queue_bytes = 32 * 32 * 3 * 2;  // two images: the hand-over waits for the writers
  const auto summary = fluxbatch::runtime::run_job(job_of(12), dir.path().string(), options, gen);
  CHECK(summary.rendered == 12);
  CHECK(summary.write_threads == 3);
  CHECK(summary.write_peak_queued_bytes <= options.write_queue_bytes);
  std::vector<int64_t> order;
  for (const auto& e : fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string()).entries) {
    CHECK(e.status == ManifestStatus::kOk);
    CHECK(fs::exists(dir / e.file));
    order.push_back(e.index);
  }
  CHECK(order == std::vector<int64_t>{3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8});
}
