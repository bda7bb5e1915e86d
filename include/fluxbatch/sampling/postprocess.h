// VAE output to 8-bit pixels exactly as diffusers' VaeImageProcessor.postprocess(output_type="pil").
#pragma once
#include <ATen/core/Tensor.h>

namespace fluxbatch::sampling {

// image: [B, 3, H, W] in the model dtype, any device -> [B, H, W, 3] uint8 on the CPU, contiguous.
// (x * 0.5 + 0.5).clamp(0, 1) in the input dtype on its device, then float32 on the CPU, * 255,
// round half to even, uint8 (numpy's (images * 255).round().astype("uint8")).
at::Tensor postprocess_uint8(const at::Tensor& image);

}  // namespace fluxbatch::sampling
