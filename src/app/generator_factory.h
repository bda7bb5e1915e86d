// The seam between the CLI and the FLUX pipeline: the one place that builds an ImageGenerator.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>

#include "fluxbatch/runtime/image_generator.h"

namespace fluxbatch::app {

struct GeneratorConfig {
  std::string model_path;  // diffusers folder (or file) given by --model or the job's "model"
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;
  bool quantize_nf4 = false;  // --quantize nf4
};

// Loads the model. ModelError / DeviceError on failure (exit 3).
std::unique_ptr<runtime::ImageGenerator> make_generator(const GeneratorConfig& config);

// --batch auto: the largest batch the pipeline's memory plan allows for this device.
int auto_batch_size(const GeneratorConfig& config);

}  // namespace fluxbatch::app
