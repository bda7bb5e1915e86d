// Expected values were produced by diffusers 0.42.1 (FlowMatchEulerDiscreteScheduler.set_timesteps
// as FluxPipeline calls it) and are compared bit for bit.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/sampling/schedule.h"
#include "test_support.h"

using fluxbatch::sampling::calculate_shift;
using fluxbatch::sampling::flow_schedule;
using fluxbatch::sampling::SchedulerConfig;

namespace {

uint32_t bits(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

void check_bits(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("index " << i << ": got " << got[i] << ", want " << want[i]);
    CHECK(bits(got[i]) == bits(want[i]));
  }
}

}  // namespace

TEST_CASE("calculate_shift matches diffusers", "[sampling]") {
  const SchedulerConfig dev = SchedulerConfig::flux_dev();
  CHECK(calculate_shift(4096, dev) == 1.15);
  CHECK(calculate_shift(3840, dev) == 1.1066666666666665);
  CHECK(calculate_shift(16, dev) == 0.459375);
  CHECK(calculate_shift(1024, dev) == 0.63);
}

TEST_CASE("dev schedule, 28 steps at 1024x1024, is bit-identical to diffusers", "[sampling]") {
  const auto s = flow_schedule(28, 4096, SchedulerConfig::flux_dev());
  check_bits(s.sigmas, {0x1.0p+0f,     0x1.fa10b2p-1f, 0x1.f3d36ep-1f, 0x1.ed4208p-1f, 0x1.e655b2p-1f, 0x1.df06d2p-1f,
                        0x1.d74cf4p-1f, 0x1.cf1ea8p-1f, 0x1.c67156p-1f, 0x1.bd390ep-1f, 0x1.b3686p-1f,  0x1.a8f00cp-1f,
                        0x1.9dbeb2p-1f, 0x1.91c07ap-1f, 0x1.84de9ep-1f, 0x1.76fedp-1f,  0x1.680296p-1f, 0x1.57c64ep-1f,
                        0x1.462036p-1f, 0x1.32dee2p-1f, 0x1.1dc786p-1f, 0x1.069382p-1f, 0x1.d9dab8p-2f, 0x1.a0d92ap-2f,
                        0x1.612014p-2f, 0x1.196c82p-2f, 0x1.904a8p-3f,  0x1.acefd2p-4f, 0.0f});
  check_bits(s.timesteps, {0x1.f4p+9f,     0x1.ee344ep+9f, 0x1.e81c7ap+9f, 0x1.e1b27cp+9f, 0x1.daefbp+9f,  0x1.d3ccaap+9f,
                           0x1.cc4126p+9f, 0x1.c443fp+9f,  0x1.bbcaaep+9f, 0x1.b2c9b8p+9f, 0x1.a933eep+9f, 0x1.9efa6cp+9f,
                           0x1.940c3ap+9f, 0x1.8855f8p+9f, 0x1.7bc166p+9f, 0x1.6e34d8p+9f, 0x1.5f9286p+9f, 0x1.4fb7a8p+9f,
                           0x1.3e7b74p+9f, 0x1.2bada8p+9f, 0x1.1714d8p+9f, 0x1.006c0cp+9f, 0x1.cebf98p+8f, 0x1.971414p+8f,
                           0x1.58d954p+8f, 0x1.12d3f6p+8f, 0x1.86e8cp+7f,  0x1.a2e234p+6f});
  CHECK(s.mu == 1.15);
}

TEST_CASE("dev schedule on a non-square image (768x1280, 7 steps)", "[sampling]") {
  const auto s = flow_schedule(7, 3840, SchedulerConfig::flux_dev());
  check_bits(s.sigmas, {0x1.0p+0f, 0x1.e541ecp-1f, 0x1.c43106p-1f, 0x1.9a421cp-1f, 0x1.6356bp-1f, 0x1.184b78p-1f,
                        0x1.572b2ap-2f, 0.0f});
  check_bits(s.timesteps, {0x1.f4p+9f, 0x1.d9e26p+9f, 0x1.b997ep+9f, 0x1.90a49p+9f, 0x1.5b02a8p+9f, 0x1.11b9b4p+9f,
                           0x1.4f2028p+8f});
}

TEST_CASE("schnell schedule is the plain linspace", "[sampling]") {
  const auto s = flow_schedule(4, 4096, SchedulerConfig::flux_schnell());
  check_bits(s.sigmas, {1.0f, 0.75f, 0.5f, 0.25f, 0.0f});
  check_bits(s.timesteps, {1000.0f, 750.0f, 500.0f, 250.0f});
}

TEST_CASE("one step gives sigma 1 then 0", "[sampling]") {
  const auto s = flow_schedule(1, 16, SchedulerConfig::flux_dev());
  check_bits(s.sigmas, {1.0f, 0.0f});
  check_bits(s.timesteps, {1000.0f});
}

TEST_CASE("static shift and linear time shift with a terminal", "[sampling]") {
  SchedulerConfig fixed = SchedulerConfig::flux_schnell();
  fixed.shift = 3.0;
  check_bits(flow_schedule(5, 64, fixed).sigmas,
             {0x1.0p+0f, 0x1.d89d8cp-1f, 0x1.a2e8bap-1f, 0x1.555556p-1f, 0x1.b6db7p-2f, 0.0f});

  SchedulerConfig linear = SchedulerConfig::flux_dev();
  linear.linear_time_shift = true;
  linear.shift_terminal = 0.1;
  const auto s = flow_schedule(6, 1024, linear);
  check_bits(s.sigmas, {0x1.0p+0f, 0x1.82f92ap-1f, 0x1.1a6a64p-1f, 0x1.835c7p-2f, 0x1.d5b76p-3f, 0x1.9999ap-4f, 0.0f});
  check_bits(s.timesteps, {0x1.f4p+9f, 0x1.79e754p+9f, 0x1.13cbe6p+9f, 0x1.7a4846p+8f, 0x1.cab514p+7f, 0x1.900006p+6f});
}

TEST_CASE("dev schedules for 1..60 steps at many sizes hash like diffusers'", "[sampling]") {
  // Hash over the bit patterns of sigmas then timesteps for steps = 1..60 (see the file comment).
  const std::vector<std::pair<int64_t, uint64_t>> expected = {
      {16, 0xc42314aec73e554ULL},     {256, 0x638a7d70535aa949ULL},  {1024, 0x6bcca0b62ced018aULL},
      {1369, 0x337b692d1ec6df60ULL},  {3840, 0x546865c61fa73293ULL}, {4096, 0x8ab06422d4399269ULL},
      {16384, 0x13613cbe290944faULL}};
  for (const auto& [seq, want] : expected) {
    uint64_t hash = 0;
    for (int steps = 1; steps <= 60; ++steps) {
      const auto s = flow_schedule(steps, seq, SchedulerConfig::flux_dev());
      for (const auto* values : {&s.sigmas, &s.timesteps}) {
        for (float v : *values) hash = hash * 1000003ULL + bits(v);  // mod 2^64 by wrap-around
      }
    }
    INFO("image_seq_len " << seq);
    CHECK(hash == want);
  }
}

TEST_CASE("scheduler_config.json parsing", "[sampling]") {
  fluxbatch::test::TempDir dir;
  const auto path = dir / "scheduler_config.json";

  fluxbatch::test::write_file(path, R"({"_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": true, "shift_terminal": null})");
  SchedulerConfig c = SchedulerConfig::from_json_file(path.string());
  CHECK(c.shift == 3.0);
  CHECK(c.use_dynamic_shifting);
  CHECK_FALSE(c.shift_terminal.has_value());
  CHECK_FALSE(c.linear_time_shift);

  fluxbatch::test::write_file(path, R"({"shift": 1, "time_shift_type": "linear", "shift_terminal": 0.2})");
  c = SchedulerConfig::from_json_file(path.string());
  CHECK(c.shift == 1.0);
  CHECK_FALSE(c.use_dynamic_shifting);  // class default when absent
  CHECK(c.linear_time_shift);
  CHECK(c.shift_terminal == 0.2);

  using Catch::Matchers::ContainsSubstring;
  fluxbatch::test::write_file(path, R"({"use_karras_sigmas": true})");
  CHECK_THROWS_WITH(SchedulerConfig::from_json_file(path.string()), ContainsSubstring("use_karras_sigmas"));
  fluxbatch::test::write_file(path, R"({"_class_name": "EulerDiscreteScheduler"})");
  CHECK_THROWS_AS(SchedulerConfig::from_json_file(path.string()), fluxbatch::ModelError);
  fluxbatch::test::write_file(path, R"({"shift": "three"})");
  CHECK_THROWS_WITH(SchedulerConfig::from_json_file(path.string()), ContainsSubstring("\"shift\""));
  fluxbatch::test::write_file(path, "{not json");
  CHECK_THROWS_WITH(SchedulerConfig::from_json_file(path.string()), ContainsSubstring("invalid JSON"));
  CHECK_THROWS_AS(SchedulerConfig::from_json_file((dir / "missing.json").string()), fluxbatch::ModelError);
}

TEST_CASE("flow_schedule rejects zero steps", "[sampling]") {
  CHECK_THROWS_AS(flow_schedule(0, 4096, SchedulerConfig::flux_dev()), fluxbatch::InputError);
}
