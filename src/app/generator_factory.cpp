// The one place the CLI builds an ImageGenerator: the FLUX pipeline behind the job runner's seam.
#include "generator_factory.h"

namespace fluxbatch::app {

std::unique_ptr<runtime::FluxGenerator> make_generator(const GeneratorConfig& config) {
  runtime::GeneratorOptions options;
  options.device = config.device;
  options.dtype = config.dtype;
  options.on_stage = config.on_stage;
  options.memory_note = config.memory_note;
  options.quantize_nf4 = config.quantize_nf4;
  options.residency = config.residency;
  return std::make_unique<runtime::FluxGenerator>(config.model_path, options);
}

}  // namespace fluxbatch::app
