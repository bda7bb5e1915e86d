#include "fluxbatch/runtime/memory/memory_calibration.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/nn/module.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/memory/memory_probe.h"
#include "fluxbatch/runtime/model_io/inspect.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kCacheVersion = 1;

json to_json(const Calibration& c) {
  json stages = json::array();
  for (const StageCalibration& s : c.stages) {
    stages.push_back({{"stage", s.stage},
                      {"peak_batch1", s.peak_batch1},
                      {"peak_batch2", s.peak_batch2},
                      {"resident_weight_bytes", s.resident_weight_bytes},
                      {"bytes_per_pixel", s.cost.bytes_per_pixel},
                      {"bytes_per_token", s.cost.bytes_per_token},
                      {"fixed_bytes", s.cost.fixed_bytes}});
  }
  return {{"measured_at", c.measured_at}, {"stages", stages}};
}

Calibration from_json(const json& j) {
  Calibration c;
  c.measured_at = j.at("measured_at").get<std::string>();
  for (const json& s : j.at("stages")) {
    StageCalibration sc;
    sc.stage = s.at("stage").get<std::string>();
    sc.peak_batch1 = s.at("peak_batch1").get<int64_t>();
    sc.peak_batch2 = s.at("peak_batch2").get<int64_t>();
    sc.resident_weight_bytes = s.at("resident_weight_bytes").get<int64_t>();
    sc.cost.bytes_per_pixel = s.at("bytes_per_pixel").get<double>();
    sc.cost.bytes_per_token = s.at("bytes_per_token").get<double>();
    sc.cost.fixed_bytes = s.at("fixed_bytes").get<int64_t>();
    c.stages.push_back(sc);
  }
  return c;
}

void add_tensor(const at::Tensor& t, std::set<const void*>& seen, int64_t& total) {
  if (!t.defined() || !t.has_storage()) return;
  const void* key = t.storage().data();
  if (key == nullptr || !seen.insert(key).second) return;
  total += static_cast<int64_t>(t.storage().nbytes());
}

}  // namespace

std::string default_calibration_path() {
  const auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
  };
  fs::path dir;
  if (!env("FLUXBATCH_CACHE_DIR").empty()) {
    dir = env("FLUXBATCH_CACHE_DIR");
  } else if (!env("XDG_CACHE_HOME").empty()) {
    dir = fs::path(env("XDG_CACHE_HOME")) / "fluxbatch";
  } else if (!env("HOME").empty()) {
    dir = fs::path(env("HOME")) / ".cache" / "fluxbatch";
  } else {
    dir = fs::temp_directory_path() / "fluxbatch";
  }
  return (dir / "calibration.json").string();
}

std::string device_identity(c10::Device device) {
  if (!device.is_cuda()) return "cpu";
  const int index = device.has_index() ? device.index() : 0;
  for (const GpuMemory& g : probe_gpus()) {
    if (g.index == index) return g.name + ", " + std::to_string(g.total_bytes >> 20) + " MiB";
  }
  throw DeviceError("no CUDA device cuda:" + std::to_string(index));
}

std::string model_identity(const ModelSummary& model, c10::ScalarType dtype, const std::string& quantization) {
  const std::string& model_path = model.path;
  uint64_t bytes = 0;
  std::string stored;
  for (const ComponentSummary& c : model.components) {
    bytes += c.bytes;
    if (!c.quantization.empty() && c.quantization != "none") stored += " " + c.name + ":" + c.quantization;
  }
  std::error_code ec;
  fs::path path = fs::weakly_canonical(fs::absolute(model_path), ec);
  if (ec) path = fs::absolute(model_path);
  std::string out = path.string() + ", " + std::to_string(bytes) + " B, " + dtype_name(dtype);
  if (!stored.empty()) out += ", stored" + stored;
  if (!quantization.empty()) out += ", " + quantization;
  return out;
}

std::string CalibrationKey::str() const {
  return device + " | " + model + " | " + std::to_string(width) + "x" + std::to_string(height) + ", sequence " +
         std::to_string(max_sequence_length);
}

MemoryModel apply_calibration(MemoryModel model, const Calibration& calibration) {
  size_t replaced = 0;
  for (StageModel& stage : model.stages) {
    for (const StageCalibration& c : calibration.stages) {
      if (c.stage != stage.name) continue;
      stage.cost = c.cost;
      ++replaced;
    }
  }
  model.calibrated = replaced == model.stages.size();
  return model;
}

CalibrationCache::CalibrationCache(std::string path) : path_(std::move(path)) {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return;  // no cache yet
  std::stringstream text;
  text << in.rdbuf();
  try {
    const json j = json::parse(text.str());
    if (j.at("version").get<int>() != kCacheVersion) {
      warnings_.push_back(path_ + ": calibration cache version " + j.at("version").dump() + " ignored");
      return;
    }
    for (const auto& [key, value] : j.at("entries").items()) entries_[key] = from_json(value);
  } catch (const json::exception& e) {
    entries_.clear();
    warnings_.push_back(path_ + ": unreadable calibration cache ignored (" + e.what() + ")");
  }
}

std::optional<Calibration> CalibrationCache::find(const CalibrationKey& key) const {
  const auto it = entries_.find(key.str());
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

void CalibrationCache::put(const CalibrationKey& key, const Calibration& calibration) {
  entries_[key.str()] = calibration;
}

void CalibrationCache::save() const {
  json entries = json::object();
  for (const auto& [key, calibration] : entries_) entries[key] = to_json(calibration);
  const json j = {{"version", kCacheVersion}, {"entries", entries}};
  const fs::path parent = fs::path(path_).parent_path();
  if (!parent.empty()) io::ensure_directory(parent.string());
  io::write_file_atomic(path_, j.dump(2) + "\n");
}

int64_t module_bytes(const torch::nn::Module& module) {
  std::set<const void*> seen;
  int64_t total = 0;
  for (const at::Tensor& p : module.parameters()) add_tensor(p, seen, total);
  for (const at::Tensor& b : module.buffers()) add_tensor(b, seen, total);
  for (const auto& child : module.modules(/*include_self=*/true)) {
    const auto* linear = dynamic_cast<const nn::LinearImpl*>(child.get());
    if (linear == nullptr) continue;
    for (const at::Tensor& t : linear->quantized_tensors()) add_tensor(t, seen, total);
  }
  return total;
}

std::vector<ComponentWeights> pipeline_component_weights(const FluxPipeline& pipeline) {
  std::vector<ComponentWeights> out;
  for (const char* name : {"text_encoder", "text_encoder_2", "transformer", "vae"}) out.push_back({name, 0});
  for (const auto& [name, module] : pipeline.components()) {
    for (ComponentWeights& c : out) {
      if (c.name == name && module != nullptr) c.weight_bytes = module_bytes(*module);
    }
  }
  return out;
}

std::vector<ComponentWeights> model_component_weights(const ModelSummary& model, int dtype_size,
                                                      bool quantize_nf4, bool fp8) {
  std::vector<ComponentWeights> out;
  for (const ComponentSummary& c : model.components) {
    out.push_back({c.name, loaded_bytes(c, dtype_size, quantize_nf4, fp8)});
  }
  return out;
}

EncodePeaks measure_encode(FluxPipeline& pipeline, int max_sequence_length, const PeakMeter& meter) {
  const c10::InferenceMode inference;
  // The load comes before the measurements: its transients (quantizing on load) are not a batch's
  // cost, and would land in the batch-1 peak only. Kept loaded: the job's encode stage comes next.
  pipeline.load_text_encoders();
  EncodePeaks out;
  meter.reset();
  (void)pipeline.encode_prompts({"calibration, first"}, max_sequence_length);
  out.batch1 = meter.peak();
  meter.reset();
  (void)pipeline.encode_prompts({"calibration, first", "calibration, second"}, max_sequence_length);
  out.batch2 = meter.peak();
  return out;
}

DenoisePeaks measure_denoise_decode(FluxPipeline& pipeline, int width, int height, int max_sequence_length,
                                    const PeakMeter& meter) {
  const c10::InferenceMode inference;
  pipeline.load_denoisers();  // staged: the text encoders leave first
  const models::flux::FluxConfig config = transformer_config(pipeline.files());
  // Memory does not depend on what the embeddings say: zeros of the encoders' shapes stand in for them.
  const auto embeddings = [&](int64_t batch) {
    const at::TensorOptions options = at::TensorOptions().dtype(pipeline.options().dtype);
    return PromptEmbeddings{at::zeros({batch, max_sequence_length, config.joint_attention_dim}, options),
                            at::zeros({batch, config.pooled_projection_dim}, options)};
  };
  const auto measure = [&](const auto& run) {
    meter.reset();
    run();
    return meter.peak();
  };
  DenoiseRequest request;
  request.width = width;
  request.height = height;
  request.steps = 1;  // every step has the same peak
  request.seeds = {0};
  request.guidance = {3.5};
  DenoisePeaks out;
  at::Tensor latents;
  {
    const PromptEmbeddings one = embeddings(1);
    out.denoise1 = measure([&] { latents = pipeline.denoise(one, request); });
  }
  latents = at::Tensor();
  request.seeds = {0, 1};
  request.guidance = {3.5, 3.5};
  {
    const PromptEmbeddings two = embeddings(2);
    out.denoise2 = measure([&] { latents = pipeline.denoise(two, request); });
  }
  out.decode1 = measure([&] { (void)pipeline.decode(latents.narrow(0, 0, 1), width, height); });
  out.decode2 = measure([&] { (void)pipeline.decode(latents, width, height); });
  return out;
}

Calibration fit_calibration(const MemoryModel& model, int width, int height, int max_sequence_length,
                            const EncodePeaks& encode, const DenoisePeaks& denoise) {
  Calibration out;
  out.measured_at = io::utc_timestamp();
  const std::map<std::string, std::pair<int64_t, int64_t>> peaks = {{"encode", {encode.batch1, encode.batch2}},
                                                                    {"denoise", {denoise.denoise1, denoise.denoise2}},
                                                                    {"decode", {denoise.decode1, denoise.decode2}}};
  for (const StageModel& stage : model.stages) {
    const auto it = peaks.find(stage.name);
    if (it == peaks.end()) continue;
    StageCalibration s;
    s.stage = stage.name;
    s.peak_batch1 = it->second.first;
    // Noise in small measurements must not make batch 2 look cheaper than batch 1.
    s.peak_batch2 = std::max(it->second.first, it->second.second);
    s.resident_weight_bytes = model.weight_bytes(stage.resident);
    s.cost = calibrate_stage(s.peak_batch1, s.peak_batch2, s.resident_weight_bytes, width, height,
                             max_sequence_length, model.dtype_size, stage.name == "encode");
    out.stages.push_back(s);
  }
  return out;
}

Calibration calibrate_pipeline(FluxPipeline& pipeline, const MemoryModel& model, int width, int height,
                               int max_sequence_length, const PeakMeter& meter) {
  const EncodePeaks encode = measure_encode(pipeline, max_sequence_length, meter);
  // As in a stage-major run, the text encoders are gone before the transformer runs: the later
  // peaks must not count their weights.
  pipeline.release_text_encoders();
  const DenoisePeaks denoise = measure_denoise_decode(pipeline, width, height, max_sequence_length, meter);
  return fit_calibration(model, width, height, max_sequence_length, encode, denoise);
}

}  // namespace fluxbatch::runtime
