// The CPU byte budget (--device cpu --vram-budget): counting, enforcement inside generate() only,
// and a real tiny-model render that cannot fit its batch but still writes every image, each
// identical to a batch-1 render, through the runner's halve-and-retry.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::CpuMemoryBudget;
using fluxbatch::runtime::Image;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// Passes generate() through, remembering every batch size and every image by item index.
class Recorder : public fluxbatch::runtime::ImageGenerator {
 public:
  explicit Recorder(ImageGenerator& inner) : inner_(inner) {}
  std::vector<size_t> sizes;
  std::map<int64_t, Image> images;
  std::vector<Image> generate(const std::vector<RenderItem>& batch) override {
    sizes.push_back(batch.size());
    std::vector<Image> out = inner_.generate(batch);
    for (size_t i = 0; i < out.size(); ++i) images[batch[i].index] = out[i];
    return out;
  }
  std::string model_description() const override { return inner_.model_description(); }

 private:
  ImageGenerator& inner_;
};

RenderItem item(int64_t index) {
  RenderItem it;
  it.index = index;
  it.item_index = index;
  it.prompt = "a lighthouse at dusk, take " + std::to_string(index);
  it.params.seed = 40 + static_cast<uint64_t>(index);
  it.params.width = 64;
  it.params.height = 64;
  it.params.steps = 2;
  it.params.guidance = 3.5;
  it.params.max_sequence_length = 64;
  it.file = "img-" + std::to_string(index) + ".png";
  it.location = "test:" + std::to_string(index);
  return it;
}

}  // namespace

TEST_CASE("byte sizes parse in binary units", "[memory]") {
  using fluxbatch::runtime::parse_byte_size;
  CHECK(parse_byte_size("4096") == 4096);
  CHECK(parse_byte_size("64k") == 64 * 1024);
  CHECK(parse_byte_size("512M") == int64_t{512} << 20);
  CHECK(parse_byte_size("512MB") == int64_t{512} << 20);
  CHECK(parse_byte_size("1.5G") == int64_t{3} << 29);
  CHECK(parse_byte_size("2GiB") == int64_t{2} << 30);
  for (const char* bad : {"", "abc", "-1G", "0", "12Q", "1e9", "G"}) {
    CHECK_THROWS_WITH(parse_byte_size(bad), ContainsSubstring("--vram-budget: expected a size"));
  }
  CHECK(fluxbatch::runtime::format_bytes(int64_t{3} << 29) == "1.50 GiB");
  CHECK(fluxbatch::runtime::format_bytes(512) == "512 B");
}

TEST_CASE("the CPU budget counts live tensor bytes and throws only inside a scope", "[memory]") {
  CpuMemoryBudget budget(1 << 20);
  const int64_t before = budget.live_bytes();
  {
    const at::Tensor big = at::empty({1 << 19}, at::kFloat);  // 2 MiB: outside a scope it is allowed
    CHECK(budget.live_bytes() - before == 2 << 20);
    CHECK(budget.peak_bytes() >= before + (2 << 20));
  }
  CHECK(budget.live_bytes() == before);
  CHECK_THROWS_AS(CpuMemoryBudget(1), fluxbatch::DeviceError);  // one budget at a time
  {
    CpuMemoryBudget::Scope scope(budget);
    const at::Tensor small = at::ones({1024}, at::kFloat);  // 4 KiB fits
    CHECK(small.sum().item<float>() == 1024.0f);
    try {
      (void)at::empty({1 << 19}, at::kFloat);
      FAIL("allocation past the budget did not throw");
    } catch (const c10::OutOfMemoryError& e) {
      CHECK_THAT(e.what(), ContainsSubstring("CPU out of memory"));
      CHECK_THAT(e.what(), ContainsSubstring("--vram-budget of 1.0 MiB"));
    }
  }
  CHECK(budget.live_bytes() == before);
}

TEST_CASE("a tiny-model batch that cannot fit the CPU budget renders every image by halving", "[memory][oom]") {
  const std::string model = fluxbatch::test::require_generated(kModels / "tiny-flux-dev").string();
  auto budget = std::make_shared<CpuMemoryBudget>(kUnlimited);
  fluxbatch::runtime::GeneratorOptions options;
  options.prompt_cache_size = 0;  // every call encodes its prompts: equal memory for equal batches
  const int64_t empty = budget->live_bytes();
  fluxbatch::runtime::BudgetedGenerator generator(fluxbatch::runtime::make_flux_generator(model, options), budget);
  const int64_t loaded = budget->live_bytes();
  CHECK(loaded > empty);  // the weights loaded under the budget are counted

  // Calibrate: peaks of a batch of 1 and of 2, then a budget between them.
  std::map<int64_t, Image> reference;
  int64_t peak1 = 0;
  for (int64_t i = 0; i < 4; ++i) {
    budget->reset_peak();
    reference[i] = generator.generate({item(i)}).at(0);
    peak1 = std::max(peak1, budget->peak_bytes());
  }
  budget->reset_peak();
  (void)generator.generate({item(0), item(1)});
  const int64_t peak2 = budget->peak_bytes();
  INFO("weights " << loaded - empty << " B, peak at batch 1 " << peak1 << " B, at batch 2 " << peak2 << " B");
  REQUIRE(peak2 > peak1);
  budget->set_budget_bytes((peak1 + peak2) / 2);

  fluxbatch::test::TempDir dir;
  fluxbatch::job::JobSpec spec;
  spec.path = "job.json";
  spec.output_dir = dir.path().string();
  for (int64_t i = 0; i < 4; ++i) spec.items.push_back(item(i));
  Recorder recorder(generator);
  fluxbatch::runtime::RunnerOptions runner;
  runner.batch_size = 4;
  const auto summary = fluxbatch::runtime::run_job(spec, dir.path().string(), runner, recorder);
  budget->set_budget_bytes(kUnlimited);

  const std::vector<size_t> expected{4, 2, 1, 1, 1, 1};
  CHECK(recorder.sizes == expected);
  CHECK(summary.rendered == 4);
  CHECK(summary.failed == 0);
  CHECK(summary.oom_retries == 2);
  REQUIRE(recorder.images.size() == 4);
  for (int64_t i = 0; i < 4; ++i) {
    CHECK(fs::exists(dir.path() / ("img-" + std::to_string(i) + ".png")));
    CHECK(recorder.images[i].rgb == reference[i].rgb);  // the same seed, the same image
  }
}
