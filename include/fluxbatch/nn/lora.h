// LoRA side paths of nn::Linear: y = W x + b + sum_k s_k * B_k (A_k x), computed in the activations'
// dtype next to the base weight, which is never changed (dense, NF4 or fp8 alike). A Linear holds the
// factors of every adapter attached to it (by adapter id); which adapters apply, at which scale, is
// per image and per forward: a LoraScope installs one LoraSet per image of the batch for the calling
// thread, and each Linear reads it. Without a scope (or when no image uses an adapter the layer has)
// a Linear runs exactly its plain path.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace fluxbatch::nn {

// One adapter's factors on one Linear, in the compute dtype on the layer's device.
struct LoraFactors {
  at::Tensor down;  // A: [rank, in]
  at::Tensor up;    // B: [out, rank]
  double alpha_scale = 1.0;  // the file's own scaling (alpha / rank), times the image's scale
};

// An adapter applied to an image at a scale; applied in the order given.
struct LoraUse {
  int adapter = 0;
  double scale = 1.0;
  bool operator==(const LoraUse& o) const { return adapter == o.adapter && scale == o.scale; }
  bool operator<(const LoraUse& o) const { return adapter != o.adapter ? adapter < o.adapter : scale < o.scale; }
};
using LoraSet = std::vector<LoraUse>;

// Installs `per_image` (one set per image of the batch, the batch being the first dimension of every
// Linear input) for the calling thread until destroyed; scopes nest. An empty vector, or sets that are
// all empty, mean no side paths at all. The vector must outlive the scope.
class LoraScope {
 public:
  explicit LoraScope(const std::vector<LoraSet>* per_image);
  ~LoraScope();
  LoraScope(const LoraScope&) = delete;
  LoraScope& operator=(const LoraScope&) = delete;

  // The sets in force on this thread, or nullptr.
  static const std::vector<LoraSet>* active();

 private:
  const std::vector<LoraSet>* previous_;
};

}  // namespace fluxbatch::nn
