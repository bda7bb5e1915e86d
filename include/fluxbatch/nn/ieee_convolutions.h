// A scope in which CUDA convolutions on fp32 tensors run in true fp32.
#pragma once
#include <ATen/Context.h>

namespace fluxbatch::nn {

// cuDNN convolutions in IEEE fp32 while alive, the previous setting restored after (libtorch, like
// PyTorch, lets fp32 convolutions use TF32 by default). TF32 rounds per algorithm (Winograd
// transforms, say), and cuDNN picks algorithms by shape: two decodes that must agree to rounding
// (the exact tiled VAE decode and its fp32 reference) need it off. `active` false: does nothing.
class IeeeConvolutions {
 public:
  explicit IeeeConvolutions(bool active = true);
  ~IeeeConvolutions();
  IeeeConvolutions(const IeeeConvolutions&) = delete;
  IeeeConvolutions& operator=(const IeeeConvolutions&) = delete;

 private:
  bool active_;
  at::Float32Precision saved_ = at::Float32Precision::NONE;
};

}  // namespace fluxbatch::nn
