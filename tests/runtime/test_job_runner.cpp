#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <atomic>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/io/png_writer.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::ManifestStatus;
using fluxbatch::job::JobSpec;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::Image;
using fluxbatch::runtime::ItemState;
using fluxbatch::runtime::RunnerOptions;

namespace {

// Records every batch; fills each image with a colour derived from the seed; throws for
// prompts listed in `fail_prompts`.
class FakeGenerator : public fluxbatch::runtime::ImageGenerator {
 public:
  std::vector<std::vector<int64_t>> batches;  // item indices per generate() call
  std::vector<std::string> fail_prompts;
  std::string model = "fake-flux";
  std::atomic<bool>* stop_after_first = nullptr;
  bool wrong_size = false;
  std::string create_during_generate;  // a file that "appears" while the batch renders

  std::vector<Image> generate(const std::vector<RenderItem>& batch) override {
    std::vector<int64_t> indices;
    for (const RenderItem& item : batch) indices.push_back(item.index);
    batches.push_back(indices);
    if (stop_after_first != nullptr) stop_after_first->store(true);  // as if Ctrl-C came mid-batch
    if (!create_during_generate.empty()) fluxbatch::test::write_file(create_during_generate, "appeared");
    for (const RenderItem& item : batch) {
      for (const std::string& p : fail_prompts) {
        if (item.prompt == p) throw std::runtime_error("CUDA out of memory (fake)");
      }
    }
    std::vector<Image> images;
    for (const RenderItem& item : batch) {
      Image img;
      img.width = item.params.width + (wrong_size ? 16 : 0);
      img.height = item.params.height;
      img.rgb.assign(size_t(img.width) * img.height * 3, static_cast<uint8_t>(item.params.seed));
      images.push_back(std::move(img));
    }
    return images;
  }
  std::string model_description() const override { return model; }
};

RenderItem make_item(int64_t index, const std::string& prompt, int width = 64, int steps = 4, int priority = 0) {
  RenderItem item;
  item.index = index;
  item.item_index = index;
  item.prompt = prompt;
  item.priority = priority;
  item.params.width = width;
  item.params.height = 64;
  item.params.steps = steps;
  item.params.guidance = 3.5;
  item.params.seed = 100 + static_cast<uint64_t>(index);
  item.params.max_sequence_length = 128;
  item.file = "img-" + std::to_string(index) + ".png";
  item.location = "job.json:" + std::to_string(index + 1) + ":1";
  return item;
}

JobSpec make_job(std::vector<RenderItem> items) {
  JobSpec spec;
  spec.path = "job.json";
  spec.output_dir = "out";
  spec.items = std::move(items);
  return spec;
}

std::vector<fluxbatch::io::ManifestEntry> manifest_of(const fs::path& dir) {
  const auto contents = fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string());
  CHECK(contents.skipped.empty());
  return contents.entries;
}

}  // namespace

TEST_CASE("run_job renders every item, writes PNGs with metadata and a manifest", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = (dir / "out").string();  // created by the runner
  const JobSpec spec = make_job({make_item(0, "a fox"), make_item(1, "a cat")});
  FakeGenerator gen;
  RunnerOptions options;
  options.batch_size = 4;
  const auto summary = fluxbatch::runtime::run_job(spec, out, options, gen);

  CHECK(summary.total == 2);
  CHECK(summary.rendered == 2);
  CHECK(summary.failed == 0);
  CHECK(summary.skipped == 0);
  CHECK_FALSE(summary.interrupted);
  REQUIRE(gen.batches.size() == 1);
  CHECK(gen.batches[0] == std::vector<int64_t>{0, 1});

  const auto text = fluxbatch::io::read_png_text(fluxbatch::test::read_file(fs::path(out) / "img-1.png"));
  REQUIRE(text.size() == 2);
  CHECK(text[0].key == "parameters");
  CHECK_THAT(text[0].text, ContainsSubstring("a cat\nSteps: 4, Sampler: Euler"));
  CHECK_THAT(text[0].text, ContainsSubstring("Seed: 101, Size: 64x64, Model: fake-flux"));
  CHECK(text[1].key == "fluxbatch");
  CHECK(text[1].text == fluxbatch::job::item_to_json(spec.items[1]));

  const auto entries = manifest_of(out);
  REQUIRE(entries.size() == 2);
  CHECK(entries[1].file == "img-1.png");
  CHECK(entries[1].status == ManifestStatus::kOk);
  CHECK(entries[1].prompt == "a cat");
  CHECK(entries[1].seed == 101);
  CHECK(entries[1].model == "fake-flux");
  CHECK(entries[1].batch_size == 2);
  CHECK(entries[1].max_sequence_length == 128);
}

TEST_CASE("batches group equal size/steps/sequence length within a priority, in render order", "[runner]") {
  // Render order (priority desc, then index): 0,1,2,3 at priority 5, then 4,5 at priority 0.
  const JobSpec spec = make_job({make_item(0, "a", 64, 4, 5), make_item(1, "b", 128, 4, 5),
                                 make_item(2, "c", 64, 4, 5), make_item(3, "d", 64, 8, 5),
                                 make_item(4, "e", 64, 4, 0), make_item(5, "f", 64, 4, 0)});
  fluxbatch::test::TempDir dir;
  const auto plan = fluxbatch::runtime::plan_job(spec, dir.path().string(), std::nullopt, false, 2);
  std::vector<std::vector<int64_t>> got;
  for (const auto& batch : plan.batches) {
    got.emplace_back();
    for (const RenderItem* item : batch) got.back().push_back(item->index);
  }
  // Item 4 has the same settings as 0 and 2 but a lower priority: it never joins their batch.
  CHECK(got == std::vector<std::vector<int64_t>>{{0, 2}, {1}, {3}, {4, 5}});

  const auto single = fluxbatch::runtime::plan_job(spec, dir.path().string(), std::nullopt, false, 1);
  CHECK(single.batches.size() == 6);
  CHECK_THROWS_AS(fluxbatch::runtime::plan_job(spec, dir.path().string(), std::nullopt, false, 0),
                  fluxbatch::InputError);
}

TEST_CASE("a second run skips finished items and renders only what is missing", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  JobSpec spec = make_job({make_item(0, "a"), make_item(1, "b"), make_item(2, "c")});
  FakeGenerator first;
  fluxbatch::runtime::run_job(spec, out, {}, first);
  fs::remove(dir / "img-1.png");  // lost image: must be redone

  FakeGenerator second;
  const auto summary = fluxbatch::runtime::run_job(spec, out, {}, second);
  CHECK(summary.skipped == 2);
  CHECK(summary.rendered == 1);
  REQUIRE(second.batches.size() == 1);
  CHECK(second.batches[0] == std::vector<int64_t>{1});

  // --overwrite redoes everything.
  FakeGenerator third;
  RunnerOptions overwrite;
  overwrite.overwrite = true;
  overwrite.batch_size = 8;
  const auto redo = fluxbatch::runtime::run_job(spec, out, overwrite, third);
  CHECK(redo.rendered == 3);
  CHECK(redo.skipped == 0);
  CHECK(manifest_of(out).size() == 3 + 1 + 3);
}

TEST_CASE("resume decisions compare every recorded parameter", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  const JobSpec spec = make_job({make_item(0, "a")});
  FakeGenerator gen;
  fluxbatch::runtime::run_job(spec, out, {}, gen);
  const auto manifest = fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string());
  const RenderItem base = spec.items[0];
  CHECK(fluxbatch::runtime::is_finished(base, out, manifest, std::string("fake-flux")));
  CHECK(fluxbatch::runtime::is_finished(base, out, manifest, std::nullopt));
  CHECK_FALSE(fluxbatch::runtime::is_finished(base, out, manifest, std::string("other-model")));

  auto changed = [&](auto mutate) {
    RenderItem item = base;
    mutate(item);
    return fluxbatch::runtime::is_finished(item, out, manifest, std::string("fake-flux"));
  };
  CHECK_FALSE(changed([](RenderItem& i) { i.prompt = "b"; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.seed += 1; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.width = 128; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.height = 128; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.steps = 5; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.guidance = 3.6; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.params.max_sequence_length = 256; }));
  CHECK_FALSE(changed([](RenderItem& i) { i.file = "other.png"; }));
  CHECK(changed([](RenderItem& i) { i.name = "renamed"; }));  // not a render parameter

  fs::remove(dir / "img-0.png");
  CHECK_FALSE(fluxbatch::runtime::is_finished(base, out, manifest, std::string("fake-flux")));
}

TEST_CASE("only the last ok line of a file counts for resume", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  const JobSpec first = make_job({make_item(0, "first prompt")});
  JobSpec second = first;
  second.items[0].prompt = "second prompt";
  FakeGenerator gen;
  RunnerOptions overwrite;
  overwrite.overwrite = true;
  fluxbatch::runtime::run_job(first, out, {}, gen);
  fluxbatch::runtime::run_job(second, out, overwrite, gen);  // replaces img-0.png

  const auto manifest = fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string());
  CHECK(fluxbatch::runtime::is_finished(second.items[0], out, manifest, std::nullopt));
  CHECK_FALSE(fluxbatch::runtime::is_finished(first.items[0], out, manifest, std::nullopt));
}

TEST_CASE("an existing file the item did not produce is never overwritten without --overwrite", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  fluxbatch::test::write_file(dir / "img-0.png", "someone else's picture");
  const JobSpec spec = make_job({make_item(0, "a"), make_item(1, "b")});
  FakeGenerator gen;
  const auto plan = fluxbatch::runtime::plan_job(spec, out, std::nullopt, false, 1);
  CHECK(plan.items[0].state == ItemState::kBlocked);
  CHECK_THAT(plan.items[0].reason, ContainsSubstring("--overwrite"));
  CHECK(plan.items[1].state == ItemState::kRender);

  const auto summary = fluxbatch::runtime::run_job(spec, out, {}, gen);
  CHECK(summary.blocked == 1);
  CHECK(summary.rendered == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("img-0.png"));
  CHECK(fluxbatch::test::read_file(dir / "img-0.png") == "someone else's picture");
  const auto entries = manifest_of(out);
  REQUIRE(entries.size() == 2);
  CHECK(entries[0].status == ManifestStatus::kFailed);
}

TEST_CASE("a failing batch is recorded and the other batches still render", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  const JobSpec spec = make_job({make_item(0, "ok one"), make_item(1, "boom", 128), make_item(2, "ok two")});
  FakeGenerator gen;
  gen.fail_prompts = {"boom"};
  const auto summary = fluxbatch::runtime::run_job(spec, out, {}, gen);
  CHECK(summary.rendered == 2);
  CHECK(summary.failed == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("img-1.png: CUDA out of memory (fake)"));
  CHECK(fs::exists(dir / "img-0.png"));
  CHECK_FALSE(fs::exists(dir / "img-1.png"));
  CHECK(fs::exists(dir / "img-2.png"));

  const auto entries = manifest_of(out);
  REQUIRE(entries.size() == 3);
  int failed = 0;
  for (const auto& e : entries) {
    if (e.status == ManifestStatus::kFailed) {
      ++failed;
      CHECK(e.file == "img-1.png");
      CHECK_THAT(e.error, Catch::Matchers::StartsWith("CUDA out of memory (fake)"));
      CHECK_THAT(e.error, ContainsSubstring("even alone, at batch 1"));
    }
  }
  CHECK(failed == 1);

  // The failed item is retried by the next run; the finished ones are skipped.
  FakeGenerator retry;
  const auto again = fluxbatch::runtime::run_job(spec, out, {}, retry);
  CHECK(again.skipped == 2);
  CHECK(again.rendered == 1);
}

TEST_CASE("images of the wrong size fail their items instead of being written", "[runner]") {
  fluxbatch::test::TempDir dir;
  FakeGenerator gen;
  gen.wrong_size = true;
  const auto summary = fluxbatch::runtime::run_job(make_job({make_item(0, "a")}), dir.path().string(), {}, gen);
  CHECK(summary.failed == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("80x64 image for a 64x64 item"));
  CHECK_FALSE(fs::exists(dir / "img-0.png"));
}

TEST_CASE("a stop request finishes the batch in hand and leaves the rest", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = dir.path().string();
  const JobSpec spec = make_job({make_item(0, "a"), make_item(1, "b", 128), make_item(2, "c", 256)});
  std::atomic<bool> stop{false};
  FakeGenerator gen;
  gen.stop_after_first = &stop;
  RunnerOptions options;
  options.stop = &stop;
  const auto summary = fluxbatch::runtime::run_job(spec, out, options, gen);
  CHECK(summary.interrupted);
  CHECK(summary.rendered == 1);
  CHECK(summary.not_started == 2);
  CHECK(gen.batches.size() == 1);
  CHECK(fs::exists(dir / "img-0.png"));
  CHECK(manifest_of(out).size() == 1);
}

TEST_CASE("a dry run plans without generating or writing anything", "[runner]") {
  fluxbatch::test::TempDir dir;
  const auto out = (dir / "out").string();
  FakeGenerator gen;
  RunnerOptions options;
  options.dry_run = true;
  const auto summary = fluxbatch::runtime::run_job(make_job({make_item(0, "a"), make_item(1, "b")}), out, options, gen);
  CHECK(summary.not_started == 2);
  CHECK(summary.rendered == 0);
  CHECK(gen.batches.empty());
  CHECK_FALSE(fs::exists(out));
}

TEST_CASE("two items writing the same file are rejected before anything renders", "[runner]") {
  fluxbatch::test::TempDir dir;
  JobSpec spec = make_job({make_item(0, "a"), make_item(1, "b")});
  spec.items[1].file = spec.items[0].file;
  FakeGenerator gen;
  CHECK_THROWS_WITH(fluxbatch::runtime::run_job(spec, dir.path().string(), {}, gen),
                    ContainsSubstring("job.json:2:1: output file img-0.png is also written by the item at job.json:1:1"));
  CHECK(gen.batches.empty());
  CHECK(fs::is_empty(dir.path()));  // nothing created, not even the manifest
}

TEST_CASE("a file that appears while its image renders is not overwritten", "[runner]") {
  fluxbatch::test::TempDir dir;
  FakeGenerator gen;
  gen.create_during_generate = (dir / "img-0.png").string();
  const auto summary = fluxbatch::runtime::run_job(make_job({make_item(0, "a")}), dir.path().string(), {}, gen);
  CHECK(summary.failed == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("already exists"));
  CHECK(fluxbatch::test::read_file(dir / "img-0.png") == "appeared");
}
