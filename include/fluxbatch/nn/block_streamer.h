// A model whose blocks visit the device one at a time (block streaming, --offload stream): every
// weight waits in host memory (page-locked on CUDA, one block); for a stage the non-block tensors and
// the first `resident` blocks are copied to the device as PinnedWeights does, and the other blocks
// pass through a small ring of device slots. While block i computes, the next streamed block is
// copied into a free slot on a copy stream; the compute stream waits for that copy with an event,
// and the copy into a slot waits with another event for the block that used the slot last. The host
// never waits for the device: before_block/after_block only enqueue.
//
// On the CPU the host copies are plain memory taken outside c10's allocator and the "device" copies
// (resident tensors and slots) come from it, so a counting allocator (runtime::CpuMemoryBudget) sees
// exactly what the device would hold; copies are memcpys.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace fluxbatch::nn {

class BlockStreamer {
 public:
  // Takes over `module`'s tensors (parameters, buffers, NF4 / fp8 Linear tensors) like PinnedWeights.
  // `blocks`: disjoint submodules of `module` in the order the forward runs them (the hook's
  // indices); everything else is "other" and is resident whenever the module is on the device.
  // `slots` >= 1: device buffers of the ring (2 = double buffering). The module must outlive this
  // object and keep its structure.
  BlockStreamer(torch::nn::Module& module, std::vector<torch::nn::Module*> blocks, c10::Device device, int slots = 2);
  ~BlockStreamer();
  BlockStreamer(const BlockStreamer&) = delete;
  BlockStreamer& operator=(const BlockStreamer&) = delete;

  // Copies the other tensors and blocks [0, resident) to the device, makes the ring (when some block
  // is streamed) and starts the first streamed copies, all ordered on the current stream. A call
  // while on the device with another `resident` goes home first.
  void to_device(int resident);
  // Every tensor points at its host copy again; the device copies and slots go back to the
  // allocator (after the copy stream's pending copies, which the current stream waits for).
  void to_host();

  // Around block i's launch (models::flux::BlockHook). Resident blocks cost nothing. A streamed
  // block is pointed at its slot once its copy is ordered before the current stream's next work,
  // and back at its host copy after; the slot then takes the next streamed block (cyclically, so the
  // next call's first blocks arrive during this call's last ones). A block out of the expected order
  // (a call that stopped part-way, e.g. out of memory) restarts the ring at that block.
  void before_block(int64_t index);
  void after_block(int64_t index);

  bool on_device() const;
  int blocks() const;
  int resident() const;                    // blocks kept on the device while on_device()
  int slots() const;                       // ring size in use (0 when nothing is streamed)
  int64_t block_bytes(int index) const;    // one block's tensors, as laid out (256-byte aligned)
  int64_t other_bytes() const;             // the non-block tensors
  int64_t host_bytes() const;              // everything held in host memory
  int64_t slot_bytes() const;              // one slot: the largest streamed block
  int64_t streamed_bytes() const;          // copied per forward: the streamed blocks' bytes
  int64_t copies() const;                  // block copies issued so far
  int64_t restarts() const;                // times the ring restarted (out-of-order blocks)
  bool host_holds(const at::Tensor& t) const;  // t's data lies in the host copy

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fluxbatch::nn
