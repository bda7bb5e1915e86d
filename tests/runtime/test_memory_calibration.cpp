// Calibration: the cache file (round trip, atomic save, tolerance of a broken file, the path
// rules), exact weight bytes, a real calibration of the tiny model on the CPU, per-group plans, the
// runner's per-shape batch (--batch auto), and the allocator settings applied at start-up.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <ATen/ATen.h>
#include <c10/core/AllocatorConfig.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/runtime/execution/job_runner.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/memory/memory_allocator.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using namespace fluxbatch::runtime;

namespace {

const fs::path kModels = FLUXBATCH_MODELS_DIR;

Calibration sample_calibration() {
  Calibration c;
  c.measured_at = "2025-01-31T12:00:00Z";
  c.stages.push_back({"encode", 1000, 1100, 500, {0.0, 3.5, 400}});
  c.stages.push_back({"denoise", 2000, 2600, 500, {0.25, 0.0, 900}});
  c.stages.push_back({"decode", 1500, 1700, 500, {0.125, 0.0, 800}});
  return c;
}

// Sets an environment variable for the scope, restoring the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    if (value) ::setenv(name, value, 1); else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) ::setenv(name_.c_str(), old_.c_str(), 1); else ::unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

}  // namespace

TEST_CASE("the calibration cache round-trips through an atomically written file", "[memmon][calibration]") {
  fluxbatch::test::TempDir dir;
  const std::string path = (dir / "sub" / "calibration.json").string();
  const CalibrationKey key{"NVIDIA H100 80GB HBM3, 81559 MiB", "/m, 123 B, bf16", 1024, 768, 512};
  CHECK(key.str() == "NVIDIA H100 80GB HBM3, 81559 MiB | /m, 123 B, bf16 | 1024x768, sequence 512");
  {
    CalibrationCache cache(path);  // no file yet: empty, no warning
    CHECK(cache.warnings().empty());
    CHECK_FALSE(cache.find(key));
    cache.put(key, sample_calibration());
    cache.save();  // creates sub/
  }
  const CalibrationCache again(path);
  const auto found = again.find(key);
  REQUIRE(found);
  CHECK(found->measured_at == "2025-01-31T12:00:00Z");
  REQUIRE(found->stages.size() == 3);
  CHECK(found->stages[1].stage == "denoise");
  CHECK(found->stages[1].peak_batch2 == 2600);
  CHECK(found->stages[1].cost.bytes_per_pixel == 0.25);
  CHECK(found->stages[0].cost.bytes_per_token == 3.5);
  CHECK(found->stages[2].cost.fixed_bytes == 800);
  CalibrationKey other = key;
  other.max_sequence_length = 256;  // another shape is another entry
  CHECK_FALSE(again.find(other));
  other = key;
  other.device = "cpu";
  CHECK_FALSE(again.find(other));

  fluxbatch::test::write_file(path, "{not json");
  const CalibrationCache broken(path);
  REQUIRE(broken.warnings().size() == 1);
  CHECK_THAT(broken.warnings()[0], ContainsSubstring("unreadable calibration cache ignored"));
  CHECK_FALSE(broken.find(key));
}

TEST_CASE("the calibration cache lives under FLUXBATCH_CACHE_DIR, XDG_CACHE_HOME or ~/.cache", "[memmon][calibration]") {
  {
    const ScopedEnv a("FLUXBATCH_CACHE_DIR", "/tmp/fbc");
    CHECK(default_calibration_path() == "/tmp/fbc/calibration.json");
  }
  const ScopedEnv a("FLUXBATCH_CACHE_DIR", nullptr);
  {
    const ScopedEnv b("XDG_CACHE_HOME", "/tmp/xdg");
    CHECK(default_calibration_path() == "/tmp/xdg/fluxbatch/calibration.json");
  }
  const ScopedEnv b("XDG_CACHE_HOME", nullptr);
  const ScopedEnv c("HOME", "/home/someone");
  CHECK(default_calibration_path() == "/home/someone/.cache/fluxbatch/calibration.json");
}

TEST_CASE("a calibration replaces the built-in stage costs", "[memmon][calibration]") {
  const std::vector<ComponentWeights> weights = {
      {"text_encoder", 100}, {"text_encoder_2", 200}, {"transformer", 300}, {"vae", 400}};
  const MemoryModel base = flux_memory_model(weights, 2, Residency::kDevice);
  CHECK_FALSE(base.calibrated);
  const MemoryModel calibrated = apply_calibration(base, sample_calibration());
  CHECK(calibrated.calibrated);
  CHECK(calibrated.stages[1].cost.bytes_per_pixel == 0.25);
  Calibration partial = sample_calibration();
  partial.stages.pop_back();
  CHECK_FALSE(apply_calibration(base, partial).calibrated);

  // One model per group: the calibrated group is planned with its own costs and marked.
  const std::vector<ResolutionGroup> groups = {{64, 64, 512, 4}, {128, 64, 512, 4}};
  const Plan plan = plan_batches(std::vector<MemoryModel>{calibrated, base}, groups, int64_t{1} << 30, 8);
  REQUIRE(plan.groups.size() == 2);
  CHECK(plan.groups[0].calibrated);
  CHECK_FALSE(plan.groups[1].calibrated);
  // denoise at batch 4: 700 weights (transformer + VAE: the text encoders are freed after encoding)
  // + 900 fixed + 4 * ceil(0.25 * 4096 px * 2 B) = 9792
  CHECK(plan.groups[0].stages[1].peak_bytes == 700 + 900 + 4 * 2048);
  CHECK(plan_group(calibrated, groups[0], 2).stages[1].peak_bytes == 700 + 900 + 2 * 2048);
  CHECK_THROWS_AS(plan_batches(std::vector<MemoryModel>{base}, groups, 1 << 30), fluxbatch::InputError);
}

TEST_CASE("module_bytes counts parameters and buffers once each", "[memmon][calibration]") {
  fluxbatch::nn::Linear linear(16, 8, true, at::TensorOptions().dtype(at::kBFloat16));
  CHECK(module_bytes(*linear) == (16 * 8 + 8) * 2);
}

TEST_CASE("calibrating the tiny model on the CPU measures every stage at batch 1 and 2", "[memmon][calibration]") {
  const fs::path model = fluxbatch::test::require_generated(kModels / "tiny-flux-dev");
  CpuMemoryBudget counter(std::numeric_limits<int64_t>::max());  // before loading: weights count
  PipelineOptions options;
  FluxPipeline pipeline(model.string(), options);
  const std::vector<ComponentWeights> weights = pipeline_component_weights(pipeline);
  REQUIRE(weights.size() == 4);
  int64_t total = 0;
  for (const ComponentWeights& c : weights) {
    CHECK(c.weight_bytes > 0);
    total += c.weight_bytes;
  }
  CHECK(counter.live_bytes() >= total);  // the weights are alive in the counted CPU memory

  const MemoryModel base = flux_memory_model(weights, 4, Residency::kDevice);
  const PeakMeter meter{[&] { counter.reset_peak(); }, [&] { return counter.peak_bytes(); }};
  const Calibration c = calibrate_pipeline(pipeline, base, 64, 64, 32, meter);
  REQUIRE(c.stages.size() == 3);
  for (const StageCalibration& s : c.stages) {
    INFO(s.stage);
    // Encode holds every component; denoise and decode only the transformer and the VAE (the text
    // encoders are released after encoding, as in a stage-major run).
    const int64_t resident = base.weight_bytes(s.stage == "encode" ? base.stages[0].resident : base.stages[1].resident);
    CHECK(s.resident_weight_bytes == resident);
    CHECK(s.resident_weight_bytes <= total);
    CHECK(s.peak_batch1 > resident);  // weights plus activations
    CHECK(s.peak_batch2 >= s.peak_batch1);
  }
  CHECK(c.stages[1].stage == "denoise");
  CHECK(c.stages[1].cost.bytes_per_pixel > 0.0);  // a second image's latents and activations
  CHECK(c.stages[0].cost.bytes_per_pixel == 0.0);  // encode scales with tokens
  const MemoryModel calibrated = apply_calibration(base, c);
  // The fit reproduces its own measurements.
  const ResolutionGroup g{64, 64, 32, 2};
  CHECK(plan_group(calibrated, g, 2).stages[1].peak_bytes >= c.stages[1].peak_batch2 - 8);
  CHECK(plan_group(calibrated, g, 2).stages[1].peak_bytes <= c.stages[1].peak_batch2 + 8);
}

TEST_CASE("file headers predict the loaded sizes exactly, dense and quantized on load", "[memmon][calibration]") {
  const fs::path model = fluxbatch::test::require_generated(kModels / "tiny-flux-dev");
  for (const bool nf4 : {false, true}) {
    INFO("quantize nf4: " << nf4);
    PipelineOptions options;
    options.quantize_nf4 = options.quantize_t5_nf4 = nf4;
    FluxPipeline pipeline(model.string(), options);
    const std::vector<ComponentWeights> loaded = pipeline_component_weights(pipeline);
    const std::vector<ComponentWeights> predicted = model_component_weights(summarize_model(model.string()), 4, nf4);
    REQUIRE(predicted.size() == 4);
    for (const ComponentWeights& p : predicted) {
      INFO(p.name);
      const auto it = std::find_if(loaded.begin(), loaded.end(), [&](const ComponentWeights& c) { return c.name == p.name; });
      REQUIRE(it != loaded.end());
      CHECK(p.weight_bytes == it->weight_bytes);
    }
  }
}

TEST_CASE("a staged calibration measures the encode stage without the transformer", "[memmon][calibration]") {
  const fs::path model = fluxbatch::test::require_generated(kModels / "tiny-flux-dev");
  CpuMemoryBudget counter(std::numeric_limits<int64_t>::max());
  PipelineOptions options;
  options.residency = Residency::kStaged;
  FluxPipeline pipeline(model.string(), options);
  const std::vector<ComponentWeights> weights = model_component_weights(summarize_model(model.string()), 4, false);
  const MemoryModel base = flux_memory_model(weights, 4, Residency::kStaged);
  const PeakMeter meter{[&] { counter.reset_peak(); }, [&] { return counter.peak_bytes(); }};
  const Calibration c = calibrate_pipeline(pipeline, base, 64, 64, 32, meter);
  REQUIRE(c.stages.size() == 3);
  const int64_t text = base.weight_bytes({"text_encoder", "text_encoder_2"});
  const int64_t denoisers = base.weight_bytes({"transformer", "vae"});
  CHECK(c.stages[0].resident_weight_bytes == text);
  CHECK(c.stages[0].peak_batch1 > text);
  CHECK(c.stages[0].peak_batch1 < text + denoisers);  // the transformer and VAE were not loaded
  CHECK(c.stages[1].resident_weight_bytes == denoisers);
  CHECK(c.stages[1].peak_batch1 < text + denoisers);  // nor the text encoders still there
  CHECK(c.stages[1].cost.bytes_per_pixel > 0.0);
  CHECK_FALSE(pipeline.text_encoders_loaded());
}

TEST_CASE("the runner takes a batch per shape, capped by batch_size", "[memmon][runner]") {
  struct Fake : ImageGenerator {
    std::vector<size_t> sizes;
    std::vector<Image> generate(const std::vector<fluxbatch::job::RenderItem>& batch) override {
      sizes.push_back(batch.size());
      std::vector<Image> out;
      for (const auto& item : batch) {
        out.push_back({item.params.width, item.params.height,
                       std::vector<uint8_t>(size_t(item.params.width) * item.params.height * 3, 7)});
      }
      return out;
    }
    std::string model_description() const override { return "fake"; }
  };
  fluxbatch::job::JobSpec spec;
  for (int i = 0; i < 7; ++i) {
    fluxbatch::job::RenderItem item;
    item.index = i;
    item.prompt = "p" + std::to_string(i);
    item.params.width = i < 5 ? 32 : 64;
    item.params.height = 32;
    item.file = "img-" + std::to_string(i) + ".png";
    spec.items.push_back(item);
  }
  fluxbatch::test::TempDir dir;
  RunnerOptions options;
  options.batch_size = 3;
  options.batch_for = [](const fluxbatch::job::RenderItem& item) { return item.params.width == 32 ? 5 : 1; };
  Fake fake;
  const RunSummary summary = run_job(spec, dir.path().string(), options, fake);
  CHECK(summary.rendered == 7);
  CHECK(fake.sizes == std::vector<size_t>{3, 2, 1, 1});  // 32 px: 5 capped at 3; 64 px: 1
}

TEST_CASE("fluxbatch turns on expandable segments unless the user configured the allocator", "[memmon]") {
  const char* user = std::getenv("PYTORCH_ALLOC_CONF") ? "PYTORCH_ALLOC_CONF"
                     : std::getenv("PYTORCH_CUDA_ALLOC_CONF") ? "PYTORCH_CUDA_ALLOC_CONF"
                                                               : nullptr;
  const AllocatorSetup setup = configure_allocator();
  if (user != nullptr) {
    CHECK(setup.source == std::string("from ") + user);
    return;
  }
  CHECK(setup.source == "set by fluxbatch");
  CHECK(setup.settings == "expandable_segments:True");
  CHECK(setup.expandable_segments);
  CHECK(setup.describe() == "expandable_segments:True (set by fluxbatch)");
  CHECK(c10::CachingAllocator::AcceleratorAllocatorConfig::use_expandable_segments());
  CHECK(std::string(std::getenv("PYTORCH_ALLOC_CONF")) == "expandable_segments:True");
}
