// Placeholder until the FLUX pipeline lands: replace the two bodies with the pipeline's
// make_flux_generator(...) and its memory plan.
#include "generator_factory.h"

#include "fluxbatch/core/error.h"

namespace fluxbatch::app {

std::unique_ptr<runtime::ImageGenerator> make_generator(const GeneratorConfig& config) {
  throw ModelError("cannot render with " + config.model_path +
                   ": the FLUX pipeline is not built yet (use --dry-run to check a job)");
}

int auto_batch_size(const GeneratorConfig& /*config*/) { return 1; }

}  // namespace fluxbatch::app
