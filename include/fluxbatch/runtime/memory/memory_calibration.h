// Calibration of the memory model by measurement: each stage's peak at batch 1 and batch 2 on the
// loaded pipeline (one prompt encoded, one denoising step, one decode), fitted by calibrate_stage,
// and kept in a JSON cache so the next run on the same GPU model, model and resolution reuses it.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/runtime/memory/memory_planner.h"
#include "fluxbatch/runtime/model_io/inspect.h"

namespace torch::nn {
class Module;
}

namespace fluxbatch::runtime {

class FluxPipeline;

// Where calibrations live: $FLUXBATCH_CACHE_DIR/calibration.json, else
// $XDG_CACHE_HOME/fluxbatch/calibration.json, else ~/.cache/fluxbatch/calibration.json.
std::string default_calibration_path();

// "NVIDIA H100 80GB HBM3, 81559 MiB" for a CUDA device, "cpu" for the CPU.
std::string device_identity(c10::Device device);

// "<absolute path>, <bytes as stored> B, bf16, <quantization>" from file headers only (the model's
// summarize_model), so `plan` (which loads nothing) and `render` compute the same identity.
// `quantization` names what is done on top of the stored format ("" when nothing); the stored
// quantization comes from the summary.
std::string model_identity(const ModelSummary& model, c10::ScalarType dtype, const std::string& quantization = "");

struct CalibrationKey {
  std::string device;  // device_identity
  std::string model;   // model_identity
  int width = 0;
  int height = 0;
  int max_sequence_length = 0;
  std::string str() const;  // one line, the cache's key
};

struct StageCalibration {
  std::string stage;                  // "encode", "denoise", "decode"
  int64_t peak_batch1 = 0;            // measured peak (allocated bytes, resident weights included)
  int64_t peak_batch2 = 0;
  int64_t resident_weight_bytes = 0;  // weights resident while measuring
  StageCost cost;                     // calibrate_stage's fit
};

struct Calibration {
  std::vector<StageCalibration> stages;
  std::string measured_at;  // UTC ISO 8601
};

// The model with each calibrated stage's cost replaced (stages not in `calibration` keep theirs);
// calibrated = true when every stage was replaced.
MemoryModel apply_calibration(MemoryModel model, const Calibration& calibration);

// calibration.json: {"version": 1, "entries": {"<key>": {...}}}. An unreadable or foreign file
// loads as empty (with a warning) and is replaced by the next save.
class CalibrationCache {
 public:
  explicit CalibrationCache(std::string path);
  const std::string& path() const { return path_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

  std::optional<Calibration> find(const CalibrationKey& key) const;
  void put(const CalibrationKey& key, const Calibration& calibration);
  // Writes the file atomically (temporary file + rename), creating its directory. OutputError.
  void save() const;

 private:
  std::string path_;
  std::map<std::string, Calibration> entries_;
  std::vector<std::string> warnings_;
};

// Bytes of a module's parameters, buffers and NF4 weights as they sit in memory (each storage once).
int64_t module_bytes(const torch::nn::Module& module);
// The loaded pipeline's components at their exact sizes (components not loaded: 0 bytes).
std::vector<ComponentWeights> pipeline_component_weights(const FluxPipeline& pipeline);
// What each component will take once loaded at `dtype_size`, from the model's file headers
// (summarize_model; runtime::loaded_bytes: bnb components as stored; with `quantize_nf4` the
// transformer's and T5's Linear weights counted as NF4). Equals pipeline_component_weights after
// loading (tested); the plan uses it because under staged residency nothing is loaded when the plan
// is made.
std::vector<ComponentWeights> model_component_weights(const ModelSummary& model, int dtype_size,
                                                      bool quantize_nf4, bool fp8 = false);

// Resets and reads the peak of the memory that counts (the CUDA allocator's allocated bytes, or the
// CPU counting allocator's live bytes).
struct PeakMeter {
  std::function<void()> reset;
  std::function<int64_t()> peak;
};

// The measurements behind a calibration, in the order a job runs its stages, so that a render can
// measure with the components its own stages load anyway (no component loads twice):
// measure_encode loads CLIP + T5 (if needed), encodes one prompt, then two, and leaves them loaded
// for the job's encode stage; measure_denoise_decode loads the transformer + VAE (under staged
// residency the text encoders leave first), runs one denoising step at batch 1 and 2 and one and two
// decodes on stand-in embeddings, and leaves them loaded for the job's first batch. Each peak is
// meter.peak() after meter.reset(). They throw what the pipeline throws (an out-of-memory error when
// batch 2 does not fit).
struct EncodePeaks {
  int64_t batch1 = 0, batch2 = 0;
};
struct DenoisePeaks {
  int64_t denoise1 = 0, denoise2 = 0, decode1 = 0, decode2 = 0;
};
EncodePeaks measure_encode(FluxPipeline& pipeline, int max_sequence_length, const PeakMeter& meter);
DenoisePeaks measure_denoise_decode(FluxPipeline& pipeline, int width, int height, int max_sequence_length,
                                    const PeakMeter& meter);
// Fits every stage of `model` from the peaks (calibrate_stage) and stamps the time.
Calibration fit_calibration(const MemoryModel& model, int width, int height, int max_sequence_length,
                            const EncodePeaks& encode, const DenoisePeaks& denoise);

// All three in one go (the text encoders released in between): the calibration of one shape.
Calibration calibrate_pipeline(FluxPipeline& pipeline, const MemoryModel& model, int width, int height,
                               int max_sequence_length, const PeakMeter& meter);

}  // namespace fluxbatch::runtime
