// The one place the CLI builds an ImageGenerator: the FLUX pipeline behind the job runner's seam.
#include "generator_factory.h"

#include "fluxbatch/runtime/flux_generator.h"

namespace fluxbatch::app {

std::unique_ptr<runtime::ImageGenerator> make_generator(const GeneratorConfig& config) {
  runtime::GeneratorOptions options;
  options.device = config.device;
  options.dtype = config.dtype;
  options.quantize_nf4 = config.quantize_nf4;
  return runtime::make_flux_generator(config.model_path, options);
}

// A fixed batch of 1 until the memory planner exists: every image is still independent of its batch,
// so this changes speed only, never results.
int auto_batch_size(const GeneratorConfig& /*config*/) { return 1; }

}  // namespace fluxbatch::app
