#include "fluxbatch/sampling/schedule.h"

#include "fluxbatch/core/error.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

namespace fluxbatch::sampling {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ModelError(path + ": cannot open the scheduler config");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw ModelError(path + ": invalid JSON: " + e.what());
  }
}

template <typename T>
void read_field(const json& doc, const char* key, T& out, const std::string& path) {
  auto it = doc.find(key);
  if (it == doc.end()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw ModelError(path + ": \"" + key + "\" has the wrong type (" + it->dump() + ")");
  }
}

void reject_if_true(const json& doc, const char* key, const std::string& path) {
  auto it = doc.find(key);
  if (it != doc.end() && it->is_boolean() && it->get<bool>()) {
    throw ModelError(path + ": \"" + key + "\": true is not supported by fluxbatch's flow-match Euler sampler");
  }
}

// np.linspace(1.0, 1/steps, steps) in float64, then .astype(np.float32).
std::vector<float> linspace_sigmas(int steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const double stop = 1.0 / steps;
  const double delta = stop - 1.0;
  const double step = steps > 1 ? delta / (steps - 1) : 0.0;
  for (int i = 0; i < steps; ++i) {
    // numpy computes arange(i) * step, then += start: two separately rounded operations.
    volatile double scaled = static_cast<double>(i) * step;
    const double y = scaled + 1.0;
    out[static_cast<size_t>(i)] = static_cast<float>(y);
  }
  if (steps > 1) out.back() = static_cast<float>(stop);
  return out;
}

// Python floats meeting a float32 numpy array are rounded to float32 first (NEP 50); every
// operation below is then a float32 operation, exactly as numpy evaluates them.
float time_shift(const SchedulerConfig& config, double mu, float t) {
  const float inv = 1.0f / t - 1.0f;  // (1 / t - 1) ** 1.0
  if (config.linear_time_shift) {
    const float m = static_cast<float>(mu);
    return m / (m + inv);
  }
  const float e = static_cast<float>(std::exp(mu));
  return e / (e + inv);
}

float static_shift(const SchedulerConfig& config, float s) {
  const float shift = static_cast<float>(config.shift);
  const float shift_minus_one = static_cast<float>(config.shift - 1.0);
  return shift * s / (1.0f + shift_minus_one * s);
}

void stretch_to_terminal(std::vector<float>& sigmas, double terminal) {
  const float scale = (1.0f - sigmas.back()) / static_cast<float>(1.0 - terminal);
  for (float& s : sigmas) s = 1.0f - (1.0f - s) / scale;
}

}  // namespace

SchedulerConfig SchedulerConfig::flux_dev() {
  SchedulerConfig c;
  c.shift = 3.0;
  c.use_dynamic_shifting = true;
  return c;
}

SchedulerConfig SchedulerConfig::flux_schnell() {
  SchedulerConfig c;
  c.shift = 1.0;
  c.use_dynamic_shifting = false;
  return c;
}

SchedulerConfig SchedulerConfig::from_json_file(const std::string& path) {
  const json doc = read_json(path);
  if (!doc.is_object()) throw ModelError(path + ": expected a JSON object");
  auto cls = doc.find("_class_name");
  if (cls != doc.end() && *cls != "FlowMatchEulerDiscreteScheduler") {
    throw ModelError(path + ": scheduler " + cls->dump() + " is not supported (expected FlowMatchEulerDiscreteScheduler)");
  }
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                          "stochastic_sampling", "use_flow_sigmas"}) {
    reject_if_true(doc, key, path);
  }
  SchedulerConfig c;
  read_field(doc, "num_train_timesteps", c.num_train_timesteps, path);
  read_field(doc, "shift", c.shift, path);
  read_field(doc, "use_dynamic_shifting", c.use_dynamic_shifting, path);
  read_field(doc, "base_shift", c.base_shift, path);
  read_field(doc, "max_shift", c.max_shift, path);
  read_field(doc, "base_image_seq_len", c.base_image_seq_len, path);
  read_field(doc, "max_image_seq_len", c.max_image_seq_len, path);
  auto terminal = doc.find("shift_terminal");
  if (terminal != doc.end() && !terminal->is_null()) {
    double value = 0.0;
    read_field(doc, "shift_terminal", value, path);
    c.shift_terminal = value;
  }
  std::string shift_type = "exponential";
  read_field(doc, "time_shift_type", shift_type, path);
  if (shift_type != "exponential" && shift_type != "linear") {
    throw ModelError(path + ": \"time_shift_type\" must be \"exponential\" or \"linear\", got \"" + shift_type + "\"");
  }
  c.linear_time_shift = shift_type == "linear";
  c.validate(path);
  return c;
}

void SchedulerConfig::validate(const std::string& origin) const {
  FLUXBATCH_CHECK(num_train_timesteps > 0, ModelError, origin + ": \"num_train_timesteps\" must be positive");
  FLUXBATCH_CHECK(shift > 0.0, ModelError, origin + ": \"shift\" must be positive");
  FLUXBATCH_CHECK(max_image_seq_len != base_image_seq_len, ModelError,
                  origin + ": \"max_image_seq_len\" must differ from \"base_image_seq_len\"");
  FLUXBATCH_CHECK(!shift_terminal || *shift_terminal < 1.0, ModelError, origin + ": \"shift_terminal\" must be < 1");
}

double calculate_shift(int64_t image_seq_len, const SchedulerConfig& config) {
  const double m = (config.max_shift - config.base_shift) /
                   static_cast<double>(config.max_image_seq_len - config.base_image_seq_len);
  const double b = config.base_shift - m * static_cast<double>(config.base_image_seq_len);
  return static_cast<double>(image_seq_len) * m + b;
}

FlowSchedule flow_schedule(int steps, int64_t image_seq_len, const SchedulerConfig& config) {
  FLUXBATCH_CHECK(steps >= 1, InputError, "steps must be at least 1, got " + std::to_string(steps));
  FlowSchedule out;
  out.mu = calculate_shift(image_seq_len, config);
  out.sigmas = linspace_sigmas(steps);
  for (float& s : out.sigmas) {
    s = config.use_dynamic_shifting ? time_shift(config, out.mu, s) : static_shift(config, s);
  }
  if (config.shift_terminal) stretch_to_terminal(out.sigmas, *config.shift_terminal);
  const float scale = static_cast<float>(config.num_train_timesteps);
  out.timesteps.reserve(out.sigmas.size());
  for (float s : out.sigmas) out.timesteps.push_back(s * scale);
  out.sigmas.push_back(0.0f);
  return out;
}

}  // namespace fluxbatch::sampling
