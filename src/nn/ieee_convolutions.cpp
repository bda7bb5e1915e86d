#include "fluxbatch/nn/ieee_convolutions.h"

namespace fluxbatch::nn {

IeeeConvolutions::IeeeConvolutions(bool active) : active_(active) {
  if (!active_) return;
  auto& context = at::globalContext();
  saved_ = context.float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV);
  context.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, at::Float32Precision::IEEE);
}

IeeeConvolutions::~IeeeConvolutions() {
  if (active_) at::globalContext().setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV, saved_);
}

}  // namespace fluxbatch::nn
