// Stage-major execution on the tiny dev model, fp32 on the CPU: prepare() encodes each distinct
// prompt once and frees the text encoders; under a CPU byte budget (the counting allocator that
// stands in for device memory) a batch that cannot fit is halved, a VAE decode that cannot fit
// even alone is redone in exact tiles, and an item that cannot fit at all fails alone with its reason.
// Budgets are chosen by measuring each stage's peak first, never hard-coded.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/sampling/postprocess.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::CpuMemoryBudget;
using fluxbatch::runtime::FluxGenerator;
using fluxbatch::runtime::GeneratorOptions;
using fluxbatch::runtime::Image;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

std::string model() { return fluxbatch::test::require_generated(kModels / "tiny-flux-dev").string(); }

RenderItem item(int64_t index, const std::string& prompt, int size, int max_sequence_length) {
  RenderItem it;
  it.index = index;
  it.item_index = index;
  it.prompt = prompt;
  it.params.seed = 70 + static_cast<uint64_t>(index);
  it.params.width = size;
  it.params.height = size;
  it.params.steps = 2;
  it.params.guidance = 3.5;
  it.params.max_sequence_length = max_sequence_length;
  it.file = "img-" + std::to_string(index) + ".png";
  it.location = "test:" + std::to_string(index);
  return it;
}

std::vector<const RenderItem*> pointers(const std::vector<RenderItem>& items) {
  std::vector<const RenderItem*> out;
  for (const RenderItem& it : items) out.push_back(&it);
  return out;
}

// Forwards every call to a FluxGenerator inside the budget's enforcement scope and records each
// call's batch size and each image by item index.
class Budgeted : public fluxbatch::runtime::ImageGenerator {
 public:
  Budgeted(FluxGenerator& inner, CpuMemoryBudget& budget) : inner_(inner), budget_(budget) {}
  // Off: prepare() runs unbudgeted, as if the text encoders ran elsewhere (the tiny T5's encode peak
  // is above a whole batch of 8, unlike FLUX's).
  bool budget_prepare = true;
  std::vector<size_t> sizes;
  std::map<int64_t, Image> images;

  void prepare(const std::vector<const RenderItem*>& items) override {
    if (!budget_prepare) return inner_.prepare(items);
    CpuMemoryBudget::Scope scope(budget_);
    inner_.prepare(items);
  }
  std::vector<Image> generate(const std::vector<RenderItem>&) override {
    FAIL("the runner renders through generate_each");
    return {};
  }
  void generate_each(const std::vector<RenderItem>& batch, const fluxbatch::runtime::ImageSink& on_image) override {
    sizes.push_back(batch.size());
    CpuMemoryBudget::Scope scope(budget_);
    inner_.generate_each(batch, [&](size_t i, Image&& image) {
      images[batch[i].index] = image;
      on_image(i, std::move(image));
    });
  }
  std::string model_description() const override { return inner_.model_description(); }

 private:
  FluxGenerator& inner_;
  CpuMemoryBudget& budget_;
};

fluxbatch::job::JobSpec job_of(const std::vector<RenderItem>& items, const fs::path& dir) {
  fluxbatch::job::JobSpec spec;
  spec.path = "job.json";
  spec.output_dir = dir.string();
  spec.items = items;
  return spec;
}

// Mean and largest absolute difference of two images, in 8-bit levels.
std::pair<double, int> difference(const Image& a, const Image& b) {
  REQUIRE(a.rgb.size() == b.rgb.size());
  double sum = 0.0;
  int worst = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) {
    const int d = std::abs(int(a.rgb[i]) - int(b.rgb[i]));
    sum += d;
    worst = std::max(worst, d);
  }
  return {sum / static_cast<double>(a.rgb.size()), worst};
}

// Absolute peak bytes of `work` under an unlimited budget.
template <class F>
int64_t peak_of(CpuMemoryBudget& budget, F&& work) {
  budget.reset_peak();
  work();
  return budget.peak_bytes();
}

}  // namespace

TEST_CASE("prepare encodes each distinct prompt once, then frees the text encoders", "[stages]") {
  const std::vector<RenderItem> items = {item(0, "a red fox", 64, 64),     item(1, "a blue bird", 64, 64),
                                         item(2, "a red fox", 64, 64),     item(3, "a green tree", 64, 64),
                                         item(4, "a blue bird", 64, 64),   item(5, "a red fox", 64, 32)};
  GeneratorOptions options;
  options.prompt_cache_size = 0;
  FluxGenerator reference(model(), options);
  std::vector<Image> want;
  for (const RenderItem& it : items) want.push_back(reference.generate({it}).at(0));
  CHECK(reference.stats().prompts_encoded == 6);  // no prepare, no cache: once per call

  for (const int64_t limit : {int64_t{2} << 30, int64_t{1}}) {
    INFO("embedding byte limit " << limit);
    options.prepared_embedding_bytes = limit;
    FluxGenerator gen(model(), options);
    CHECK(gen.pipeline().text_encoders_loaded());
    gen.prepare(pointers(items));
    CHECK_FALSE(gen.pipeline().text_encoders_loaded());  // released after the encode stage
    CHECK(gen.stats().encode_stages == 1);
    CHECK(gen.stats().prompts_encoded == (limit > 1 ? 4 : 1));  // 1 byte: one prompt per window
    const std::vector<Image> first = gen.generate({items[0], items[1], items[2], items[3], items[4]});
    const std::vector<Image> last = gen.generate({items[5]});
    // Each (prompt, max_sequence_length) once in all, whatever the windows.
    CHECK(gen.stats().prompts_encoded == 4);
    // 1 byte: prepare's window, then one for the batch's two missing prompts, one for the last.
    CHECK(gen.stats().encode_stages == (limit > 1 ? 1 : 3));
    CHECK_FALSE(gen.pipeline().text_encoders_loaded());
    // Alone vs. in a batch of five: bit-identical on CUDA; this CPU's GEMM blocking can move a
    // value by one level with the batch size (as in test_pipeline_generator.cpp).
    for (size_t i = 0; i < 5; ++i) CHECK(difference(first[i], want[i]).second <= 1);
    CHECK(last[0].rgb == want[5].rgb);
  }
}

TEST_CASE("the exact tiled VAE decode gives the full decode's pixels", "[stages][vae]") {
  GeneratorOptions options;
  FluxGenerator gen(model(), options);
  fluxbatch::runtime::FluxPipeline& pipeline = gen.pipeline();
  fluxbatch::runtime::DenoiseRequest request;
  request.width = 176;  // 22 x 15 latents: tiles of 48 px leave partial tiles on both axes
  request.height = 120;
  request.steps = 2;
  request.seeds = {5};
  request.guidance = {3.5};
  const at::Tensor latents = pipeline.denoise(pipeline.encode_prompts({"a harbour at dawn"}, 64), request);
  const c10::InferenceMode inference;
  const at::Tensor full = pipeline.decode_image(latents, 0, 176, 120)[0];
  const auto to_uint8 = [](const at::Tensor& x) {
    const at::Tensor pixels = fluxbatch::sampling::postprocess_uint8(x.unsqueeze(0));
    Image image;
    image.height = static_cast<int>(pixels.size(1));
    image.width = static_cast<int>(pixels.size(2));
    image.rgb.assign(pixels.data_ptr<uint8_t>(), pixels.data_ptr<uint8_t>() + pixels.numel());
    return image;
  };
  for (const int64_t tile : {48, 64, 256}) {
    fluxbatch::models::vae::ExactTileOptions tiles;
    tiles.tile_pixels = tile;
    const at::Tensor tiled = pipeline.decode_image(latents, 0, 176, 120, tiles)[0];
    REQUIRE(tiled.sizes() == full.sizes());
    const Image a = to_uint8(tiled), b = to_uint8(full);
    int64_t within_one = 0;
    for (size_t i = 0; i < a.rgb.size(); ++i) within_one += std::abs(int(a.rgb[i]) - int(b.rgb[i])) <= 1;
    const auto [mean, worst] = difference(a, b);
    INFO("tile " << tile << " px: mean " << mean << ", largest " << worst << " levels, " << within_one << " of "
                 << a.rgb.size() << " within one");
    CHECK(static_cast<double>(within_one) >= 0.999 * static_cast<double>(a.rgb.size()));
    CHECK(worst <= 2);
  }
}

TEST_CASE("a VAE decode that does not fit even alone is redone in exact tiles; every image is written", "[stages][memory]") {
  auto budget = std::make_shared<CpuMemoryBudget>(kUnlimited);
  GeneratorOptions options;
  FluxGenerator gen(model(), options);
  std::vector<RenderItem> items;
  for (int64_t i = 0; i < 3; ++i) items.push_back(item(i, "a harbour at dawn, take " + std::to_string(i), 128, 64));

  // Measure each stage: encode (prepare), denoise, full decode, decode in 64 px exact tiles (where
  // the generator's fallback ends at the latest for a 128 px image).
  const int64_t encode_peak = peak_of(*budget, [&] { gen.prepare(pointers(items)); });
  auto& pipeline = gen.pipeline();
  fluxbatch::runtime::DenoiseRequest request;
  request.width = request.height = 128;
  request.steps = 2;
  request.seeds = {1};
  request.guidance = {3.5};
  at::Tensor latents;
  const auto embeddings = [&] {
    const fluxbatch::runtime::PromptEmbeddings e = pipeline.encode_prompts({items[0].prompt}, 64);
    pipeline.release_text_encoders();
    return e;
  }();
  const int64_t denoise_peak = peak_of(*budget, [&] { latents = pipeline.denoise(embeddings, request); });
  const c10::InferenceMode inference;
  const int64_t full_peak = peak_of(*budget, [&] { (void)pipeline.decode_image(latents, 0, 128, 128); });
  fluxbatch::models::vae::ExactTileOptions tiles;
  tiles.tile_pixels = 64;
  const int64_t tiled_peak = peak_of(*budget, [&] { (void)pipeline.decode_image(latents, 0, 128, 128, tiles); });
  const int64_t needed = std::max({encode_peak, denoise_peak, tiled_peak});
  INFO("peaks: encode " << encode_peak << ", denoise " << denoise_peak << ", full decode " << full_peak
                        << ", tiled decode " << tiled_peak << " B");
  REQUIRE(needed < full_peak);

  // Full-decode references, rendered without a budget.
  std::vector<Image> full;
  for (const RenderItem& it : items) full.push_back(gen.generate({it}).at(0));
  REQUIRE(gen.stats().tiled_decodes == 0);

  budget->set_budget_bytes((needed + full_peak) / 2);
  fluxbatch::test::TempDir dir;
  Budgeted budgeted(gen, *budget);
  fluxbatch::runtime::RunnerOptions runner;
  runner.batch_size = 1;
  const auto summary = fluxbatch::runtime::run_job(job_of(items, dir.path()), dir.path().string(), runner, budgeted);
  budget->set_budget_bytes(kUnlimited);

  CHECK(summary.rendered == 3);
  CHECK(summary.failed == 0);
  CHECK(gen.stats().tiled_decodes == 3);
  REQUIRE(budgeted.images.size() == 3);
  for (int64_t i = 0; i < 3; ++i) {
    CHECK(fs::exists(dir / ("img-" + std::to_string(i) + ".png")));
    const auto [mean, worst] = difference(budgeted.images[i], full[static_cast<size_t>(i)]);
    INFO("image " << i << ": mean " << mean << ", largest " << worst);
    CHECK(worst <= 2);  // exact tiles: the full decode's pixels up to rounding
  }
}

TEST_CASE("a batch that cannot fit renders every image as batch 1 would; an item that cannot fit fails alone",
          "[stages][memory]") {
  auto budget = std::make_shared<CpuMemoryBudget>(kUnlimited);
  GeneratorOptions options;
  FluxGenerator gen(model(), options);
  std::vector<RenderItem> items;
  for (int64_t i = 0; i < 8; ++i) items.push_back(item(i, "a lighthouse, take " + std::to_string(i % 3), 64, 512));

  // Measure whole 64 px batches of 1, 2 and 8 (denoise + full decodes) after the encode stage.
  gen.prepare(pointers(items));
  std::map<size_t, int64_t> peak;
  for (const size_t n : {size_t{1}, size_t{2}, size_t{8}}) {
    const std::vector<RenderItem> batch(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(n));
    peak[n] = peak_of(*budget, [&] { (void)gen.generate(batch); });
  }
  const int64_t needed = peak[2];
  INFO("peaks: batch 1 " << peak[1] << ", 2 " << peak[2] << ", 8 " << peak[8] << " B");
  REQUIRE(needed < peak[8]);

  // Batch-1 references without a budget (another output directory).
  fluxbatch::test::TempDir reference_dir;
  Budgeted reference(gen, *budget);
  fluxbatch::runtime::RunnerOptions one;
  one.batch_size = 1;
  REQUIRE(fluxbatch::runtime::run_job(job_of(items, reference_dir.path()), reference_dir.path().string(), one,
                                      reference)
              .rendered == 8);

  // The job asks for batch 8 and has one 512 px item that cannot fit the budget even alone.
  std::vector<RenderItem> job = items;
  job.push_back(item(8, "a very large lighthouse", 512, 512));
  budget->set_budget_bytes((needed + peak[8]) / 2);
  fluxbatch::test::TempDir dir;
  Budgeted budgeted(gen, *budget);
  budgeted.budget_prepare = false;
  fluxbatch::runtime::RunnerOptions runner;
  runner.batch_size = 8;
  const auto summary = fluxbatch::runtime::run_job(job_of(job, dir.path()), dir.path().string(), runner, budgeted);
  budget->set_budget_bytes(kUnlimited);

  std::string sizes;
  for (size_t n : budgeted.sizes) sizes += std::to_string(n) + " ";
  INFO("generate_each batch sizes: " << sizes);
  REQUIRE_FALSE(budgeted.sizes.empty());
  CHECK(budgeted.sizes.front() == 8);
  CHECK(std::count(budgeted.sizes.begin(), budgeted.sizes.end(), size_t{1}) < 8);  // not all halved to 1
  CHECK(summary.oom_retries >= 1);
  CHECK(summary.rendered == 8);
  CHECK(summary.failed == 1);
  CHECK(gen.stats().tiled_decodes == 0);  // batch 1 of 64 px fits: only the 512 px item tried tiles
  for (int64_t i = 0; i < 8; ++i) {
    const std::string file = "img-" + std::to_string(i) + ".png";
    INFO(file);
    REQUIRE(fs::exists(dir / file));
    // Bit-identical on CUDA; here within the one level this CPU's GEMM blocking allows.
    CHECK(difference(budgeted.images.at(i), reference.images.at(i)).second <= 1);
  }
  CHECK_FALSE(fs::exists(dir / "img-8.png"));
  int failed = 0;
  for (const auto& e : fluxbatch::io::read_manifest((dir / fluxbatch::io::kManifestFileName).string()).entries) {
    if (e.status != fluxbatch::io::ManifestStatus::kFailed) continue;
    ++failed;
    CHECK(e.file == "img-8.png");
    CHECK_THAT(e.error, ContainsSubstring("out of memory"));
    CHECK_THAT(e.error, ContainsSubstring("even alone, at batch 1"));
    CHECK(e.batch_size == 1);
  }
  CHECK(failed == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK_THAT(summary.failures[0], ContainsSubstring("img-8.png: "));
}
