// The weight-free parts of every golden FluxPipeline run (tests/golden/cases.json): schedule,
// noise, ids and postprocess must equal diffusers' tensors exactly.
#include <catch2/catch_test_macros.hpp>

#include <ATen/ATen.h>

#include <filesystem>

#include "fluxbatch/sampling/latents.h"
#include "fluxbatch/sampling/postprocess.h"
#include "fluxbatch/sampling/schedule.h"
#include "golden_cases.h"

namespace sampling = fluxbatch::sampling;
namespace fs = std::filesystem;

namespace {

const fs::path kGolden = FLUXBATCH_GOLDEN_DIR;
const fs::path kModels = FLUXBATCH_MODELS_DIR;

at::Tensor floats(const std::vector<float>& v) { return at::tensor(v, at::kFloat); }

}  // namespace

TEST_CASE("golden cases: schedule, noise, ids and postprocess equal diffusers bit for bit", "[sampling]") {
  for (const auto& c : fluxbatch::test::read_golden_cases(kGolden)) {
    INFO("case " << c.index << " (" << c.file << ")");
    const auto golden = fluxbatch::test::read_golden_tensors(kGolden / c.file);
    const auto config = sampling::SchedulerConfig::from_json_file(
        fluxbatch::test::require_generated(kModels / c.model / "scheduler" / "scheduler_config.json").string());
    const auto size = sampling::latent_size(c.height, c.width);

    const auto schedule = sampling::flow_schedule(c.steps, size.seq_len(), config);
    CHECK(at::equal(floats(schedule.sigmas), golden.at("sigmas")));
    CHECK(at::equal(floats(schedule.timesteps), golden.at("timesteps")));

    const at::Tensor noise = sampling::initial_noise(c.seeds, 16, size, at::kFloat, at::kCPU);
    CHECK(at::equal(noise, golden.at("noise")));
    CHECK(at::equal(sampling::latent_image_ids(size, at::kFloat, at::kCPU), golden.at("latent_image_ids")));
    CHECK(at::equal(sampling::text_ids(c.max_sequence_length, at::kFloat, at::kCPU), golden.at("text_ids")));

    CHECK(at::equal(sampling::postprocess_uint8(golden.at("image_float")), golden.at("image_uint8")));
  }
}
