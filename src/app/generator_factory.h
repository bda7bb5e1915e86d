// The seam between the CLI and the FLUX pipeline: the one place that builds an ImageGenerator.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fluxbatch/runtime/flux_generator.h"

namespace fluxbatch::app {

struct GeneratorConfig {
  std::string model_path;  // diffusers folder (or file) given by --model or the job's "model"
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;
  // Memory accounting hooks (RenderMemory::attach); see runtime::GeneratorOptions.
  std::function<void(const std::string& stage)> on_stage;
  std::function<std::string(const std::vector<job::RenderItem>& batch)> memory_note;
  bool quantize_nf4 = false;  // --quantize nf4
  // --offload: on = kOffload, off = kStaged, auto = runtime::choose_residency (PipelineOptions::residency)
  runtime::Residency residency = runtime::Residency::kStaged;
};

// Loads the model. ModelError / DeviceError on failure (exit 3).
std::unique_ptr<runtime::FluxGenerator> make_generator(const GeneratorConfig& config);

}  // namespace fluxbatch::app
