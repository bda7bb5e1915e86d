#include "fluxbatch/sampling/postprocess.h"

#include "fluxbatch/core/error.h"

#include <ATen/ATen.h>

namespace fluxbatch::sampling {

// image: [B, 3, H, W] -> [B, H, W, 3] uint8
at::Tensor postprocess_uint8(const at::Tensor& image) {
  FLUXBATCH_CHECK(image.dim() == 4 && image.size(1) == 3, InputError,
                  "postprocess: expected [B, 3, H, W], got " + c10::str(image.sizes()));
  const at::Tensor unit = image.mul(0.5).add(0.5).clamp(0, 1);
  const at::Tensor pixels = unit.cpu().permute({0, 2, 3, 1}).to(at::kFloat).mul(255);
  // at::round rounds half to even, like numpy.
  return pixels.round().to(at::kByte).contiguous();
}

}  // namespace fluxbatch::sampling
