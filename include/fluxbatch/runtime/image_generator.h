// The seam between the job runner (outputs, manifest, resume) and the model pipeline.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::runtime {

// 8-bit RGB, row-major, no padding: rgb.size() == width * height * 3.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

class ImageGenerator {
 public:
  virtual ~ImageGenerator() = default;
  // Renders a batch of items that share width, height, steps and max_sequence_length; returns
  // one image per item, in order. Each image depends only on its own item (seed, prompt, ...),
  // never on which other items share the batch.
  virtual std::vector<Image> generate(const std::vector<job::RenderItem>& batch) = 0;
  // Short model description recorded in PNG metadata and the manifest (e.g. "FLUX.1-dev (diffusers)").
  virtual std::string model_description() const = 0;
};

}  // namespace fluxbatch::runtime
