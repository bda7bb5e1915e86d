// The seam between the job runner (outputs, manifest, resume) and the model pipeline.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::runtime {

// 8-bit RGB, row-major, no padding: rgb.size() == width * height * 3.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  // False when this image differs from what a normal render of its item gives (a tiled VAE decode,
  // text encoders moved to the CPU after running out of memory): it must not stand in for one in the
  // image cache.
  bool cacheable = true;
};

// Receives image `index` (position in the batch) as soon as it exists.
using ImageSink = std::function<void(size_t index, Image&& image)>;

class ImageGenerator {
 public:
  virtual ~ImageGenerator() = default;

  // Called once by the runner, before the first generate(), with every item it will render (render
  // order), so a generator can run a whole stage for the job at once (e.g. encode every distinct
  // prompt, then free the text encoders). Errors here are not fatal: the runner logs them and
  // generate() must still work for every item. Default: nothing.
  virtual void prepare(const std::vector<const job::RenderItem*>& /*items*/) {}

  // Renders a batch of items that share width, height, steps and max_sequence_length; returns
  // one image per item, in order. Each image depends only on its own item (seed, prompt, ...),
  // never on which other items share the batch.
  virtual std::vector<Image> generate(const std::vector<job::RenderItem>& batch) = 0;

  // generate() handing each image to `on_image` as soon as it is ready (in any order, each index
  // once), so the runner can write it before the rest of the batch is done. When it throws, the
  // images already handed over stay valid. Default: generate(), then each image in order.
  virtual void generate_each(const std::vector<job::RenderItem>& batch, const ImageSink& on_image) {
    std::vector<Image> images = generate(batch);
    for (size_t i = 0; i < images.size(); ++i) on_image(i, std::move(images[i]));
  }

  // Short model description recorded in PNG metadata and the manifest (e.g. "FLUX.1-dev (diffusers)").
  virtual std::string model_description() const = 0;
};

}  // namespace fluxbatch::runtime
