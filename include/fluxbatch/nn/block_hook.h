// Callbacks around each block of a model's forward, for block streaming (nn::BlockStreamer):
// `before(i)` runs before block i is launched and `after(i)` once it is, on the host, while the device
// may still be busy with earlier work. Unset costs one branch per block.
#pragma once
#include <cstdint>
#include <functional>

namespace fluxbatch::nn {

struct BlockHook {
  std::function<void(int64_t block)> before;
  std::function<void(int64_t block)> after;
};

}  // namespace fluxbatch::nn
