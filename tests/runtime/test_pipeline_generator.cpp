// FluxGenerator (the ImageGenerator the CLI renders with) on the tiny dev model, fp32 on the CPU.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "../sampling/golden_cases.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/execution/flux_generator.h"

namespace fs = std::filesystem;
using fluxbatch::job::RenderItem;
using fluxbatch::runtime::GeneratorOptions;
using fluxbatch::runtime::Image;

namespace {

const fs::path kGolden = FLUXBATCH_GOLDEN_DIR;
const fs::path kModels = FLUXBATCH_MODELS_DIR;

fluxbatch::runtime::ImageGenerator& generator() {
  static std::unique_ptr<fluxbatch::runtime::ImageGenerator> g = [] {
    GeneratorOptions options;  // CPU: fp32 by default
    options.prompt_cache_size = 2;
    return fluxbatch::runtime::make_flux_generator(
        fluxbatch::test::require_generated(kModels / "tiny-flux-dev").string(), options);
  }();
  return *g;
}

RenderItem item(const std::string& prompt, uint64_t seed, int width, int height, double guidance = 3.5) {
  RenderItem it;
  it.prompt = prompt;
  it.params.seed = seed;
  it.params.width = width;
  it.params.height = height;
  it.params.steps = 4;
  it.params.guidance = guidance;
  it.params.max_sequence_length = 512;
  it.location = "test:" + prompt;
  return it;
}

// Images of a golden case as the runner would request them.
std::vector<RenderItem> items_of(const fluxbatch::test::GoldenCase& c) {
  std::vector<RenderItem> out;
  for (size_t i = 0; i < c.prompts.size(); ++i) {
    out.push_back(item(c.prompts[i], c.seeds[i], c.width, c.height, c.guidance));
  }
  return out;
}

int max_pixel_diff(const Image& a, const Image& b) {
  REQUIRE(a.rgb.size() == b.rgb.size());
  int worst = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) worst = std::max(worst, std::abs(int(a.rgb[i]) - int(b.rgb[i])));
  return worst;
}

}  // namespace

TEST_CASE("generator renders the golden images", "[pipeline]") {
  for (const auto& c : fluxbatch::test::read_golden_cases(kGolden)) {
    if (c.model != "tiny-flux-dev") continue;
    INFO("case " << c.index);
    const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file).at("image_uint8");
    const std::vector<Image> images = generator().generate(items_of(c));
    REQUIRE(images.size() == c.prompts.size());
    for (size_t b = 0; b < images.size(); ++b) {
      CHECK(images[b].width == c.width);
      CHECK(images[b].height == c.height);
      const at::Tensor want = golden[static_cast<int64_t>(b)].contiguous();
      REQUIRE(images[b].rgb.size() == static_cast<size_t>(want.numel()));
      int worst = 0, off_by_more_than_one = 0;
      for (size_t i = 0; i < images[b].rgb.size(); ++i) {
        const int d = std::abs(int(images[b].rgb[i]) - int(want.data_ptr<uint8_t>()[i]));
        worst = std::max(worst, d);
        off_by_more_than_one += d > 1;
      }
      CHECK(worst <= 2);
      CHECK(off_by_more_than_one <= static_cast<int>(images[b].rgb.size() / 1000));
    }
  }
  CHECK_THAT(generator().model_description(), Catch::Matchers::StartsWith("FLUX.1-dev"));
}

TEST_CASE("an image does not depend on the batch it is rendered in", "[pipeline]") {
  // The four items of golden case 4; the third is case 3's single image.
  const std::vector<RenderItem> four = {item("a green apple", 11, 48, 32), item("a tall tower", 12, 48, 32),
                                        item("a blue bird on a branch", 5, 48, 32), item("snow", 13, 48, 32)};
  const std::vector<Image> batch = generator().generate(four);
  REQUIRE(batch.size() == 4);
  for (size_t i = 0; i < four.size(); ++i) {
    INFO("item " << i);
    const std::vector<Image> alone = generator().generate({four[i]});
    REQUIRE(alone.size() == 1);
    CHECK(max_pixel_diff(alone[0], batch[i]) == 0);
  }
}

TEST_CASE("guidance and seed are per item; repeated prompts share one encoding", "[pipeline]") {
  const RenderItem a = item("same prompt", 3, 64, 64, 3.5);
  const RenderItem b = item("same prompt", 3, 64, 64, 6.0);
  const RenderItem c = item("same prompt", 4, 64, 64, 3.5);
  const std::vector<Image> images = generator().generate({a, b, c, a});
  REQUIRE(images.size() == 4);
  CHECK(max_pixel_diff(images[0], images[3]) == 0);
  CHECK(max_pixel_diff(images[0], images[1]) > 0);
  CHECK(max_pixel_diff(images[0], images[2]) > 0);
  // Alone vs. second of four: bit-identical here and on CUDA; a 16-core CPU's GEMM blocking can move one
  // pixel value by 1/255 with the batch size, so the CPU check allows that much.
  CHECK(max_pixel_diff(generator().generate({b})[0], images[1]) <= 1);
}

TEST_CASE("generator rejects mixed batches", "[pipeline]") {
  using Catch::Matchers::ContainsSubstring;
  CHECK(generator().generate({}).empty());
  RenderItem other = item("b", 1, 64, 48);
  CHECK_THROWS_WITH(generator().generate({item("a", 1, 64, 64), other}), ContainsSubstring("test:b"));
  RenderItem steps = item("c", 1, 64, 64);
  steps.params.steps = 2;
  CHECK_THROWS_AS(generator().generate({item("a", 1, 64, 64), steps}), fluxbatch::InputError);
}

TEST_CASE("generator options resolve the dtype per device", "[pipeline]") {
  GeneratorOptions cpu;
  CHECK(fluxbatch::runtime::pipeline_options(cpu).dtype == at::kFloat);
  GeneratorOptions cuda;
  cuda.device = c10::Device(c10::kCUDA, 0);  // resolving options touches no device
  CHECK(fluxbatch::runtime::pipeline_options(cuda).dtype == at::kBFloat16);
  cuda.dtype = at::kFloat;
  CHECK(fluxbatch::runtime::pipeline_options(cuda).dtype == at::kFloat);
  cuda.residency = fluxbatch::runtime::Residency::kOffload;
  cuda.keep_text_encoders = false;
  const auto p = fluxbatch::runtime::pipeline_options(cuda);
  CHECK((p.residency == fluxbatch::runtime::Residency::kOffload && !p.keep_text_encoders && p.device.is_cuda()));
}
