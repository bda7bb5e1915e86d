// The flow-matching noise schedule of diffusers' FlowMatchEulerDiscreteScheduler as FluxPipeline
// drives it: sigmas from np.linspace in float64, cast to float32, shifted in numpy float32
// arithmetic, timesteps = sigmas * 1000, terminal 0 appended. Pure and weight-free.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fluxbatch::sampling {

// scheduler/scheduler_config.json. Field defaults are the scheduler class defaults (what diffusers
// uses for a key the file omits); flux_dev()/flux_schnell() are the two shipped configs.
struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  std::optional<double> shift_terminal;
  bool linear_time_shift = false;  // time_shift_type "linear" instead of "exponential"

  static SchedulerConfig flux_dev();      // shift 3.0, dynamic shifting
  static SchedulerConfig flux_schnell();  // shift 1.0, no dynamic shifting
  // Reads a diffusers scheduler_config.json. Options this sampler does not implement (karras,
  // exponential or beta sigmas, inverted sigmas, stochastic sampling) are a ModelError.
  static SchedulerConfig from_json_file(const std::string& path);
  void validate(const std::string& origin) const;
};

// diffusers' calculate_shift: mu grows linearly with the packed latent sequence length.
double calculate_shift(int64_t image_seq_len, const SchedulerConfig& config);

struct FlowSchedule {
  std::vector<float> sigmas;     // steps + 1 values, the last one 0
  std::vector<float> timesteps;  // steps values, sigmas * num_train_timesteps
  double mu = 0.0;               // the dynamic shift used (computed even when unused)
};

// The schedule FluxPipeline uses for `steps` steps on an image of `image_seq_len` packed tokens
// ((H/16) * (W/16)). Bit-identical to diffusers' scheduler.sigmas / scheduler.timesteps.
FlowSchedule flow_schedule(int steps, int64_t image_seq_len, const SchedulerConfig& config);

}  // namespace fluxbatch::sampling
