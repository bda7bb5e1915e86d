#include "fluxbatch/nn/block_streamer.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/pinned_weights.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace fluxbatch::nn {
namespace {

int64_t aligned(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// Host memory outside c10's CPU allocator (so a counting allocator does not see it), aligned for
// every dtype, freed with the last view.
at::Tensor plain_block(int64_t bytes) {
  const auto size = static_cast<size_t>(std::max<int64_t>(aligned(bytes), kAlignment));
  void* ptr = std::aligned_alloc(static_cast<size_t>(kAlignment), size);
  FLUXBATCH_CHECK(ptr != nullptr, DeviceError,
                  "block streaming: could not allocate " + std::to_string(bytes >> 20) + " MiB of host memory");
  return at::from_blob(ptr, {bytes}, [](void* p) { std::free(p); }, at::TensorOptions().dtype(at::kByte));
}

// `bytes` of `block` (uint8) from `offset` as a tensor shaped like `like`.
at::Tensor view_as_tensor(const at::Tensor& block, int64_t offset, const at::Tensor& like) {
  return block.narrow(0, offset, static_cast<int64_t>(like.nbytes())).view(like.scalar_type()).view(like.sizes());
}

}  // namespace

// The non-block tensors, or one block's: contiguous in the host block, with each tensor at the same
// offset from the part's start as in a slot, so a streamed block is one copy.
struct Part {
  std::vector<at::Tensor> tensors;  // the module's tensors, whose data is swapped
  std::vector<at::Tensor> host;     // their host copies
  std::vector<int64_t> offsets;     // from `begin`
  int64_t begin = 0;
  int64_t bytes = 0;
};

struct BlockStreamer::Impl {
  torch::nn::Module& module;
  c10::Device device;
  int max_slots;
  at::Tensor arena;  // every part, uint8, in host memory
  Part other;
  std::vector<Part> blocks;

  bool on_device = false;
  int resident = 0;
  std::vector<at::Tensor> ring;                           // [slots] uint8 device buffers of slot_bytes
  std::vector<std::vector<std::vector<at::Tensor>>> views;  // [slot][streamed block][tensor]
  int64_t slot_bytes = 0;
  std::deque<std::pair<int, int>> queue;  // (block, slot) copies issued, oldest first
  int next = 0;                           // the streamed block to copy next
  int current_block = -1, current_slot = -1;
  int64_t copies = 0, restarts = 0;
#ifdef FLUXBATCH_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> copy_stream;
  std::vector<at::cuda::CUDAEvent> copied;  // per slot: its last copy is done
  std::vector<at::cuda::CUDAEvent> used;    // per slot: the compute that read it last is done
#endif

  Impl(torch::nn::Module& m, c10::Device d, int s) : module(m), device(d), max_slots(s) {}

  int count() const { return static_cast<int>(blocks.size()); }
  int next_streamed(int b) const { return b + 1 < count() ? b + 1 : resident; }

  void point(Part& part, const std::vector<at::Tensor>& data) {
    for (size_t j = 0; j < part.tensors.size(); ++j) part.tensors[j].set_data(data[j]);
  }
  at::Tensor device_copy(const at::Tensor& host) const {
    // On the CPU the copy must be a tensor of c10's allocator: the "device" memory a budget counts.
    return device.is_cpu() ? host.clone() : host.to(device, /*non_blocking=*/true);
  }
  void to_device(Part& part) {
    for (size_t j = 0; j < part.tensors.size(); ++j) part.tensors[j].set_data(device_copy(part.host[j]));
  }

  // Copies block b's host bytes into slot s once the compute that read the slot last is done.
  void issue(int b, int s) {
    const Part& part = blocks[static_cast<size_t>(b)];
#ifdef FLUXBATCH_WITH_CUDA
    if (device.is_cuda()) {
      const c10::cuda::CUDAGuard guard(copy_stream->device_index());  // cudaMemcpyAsync's device
      used[static_cast<size_t>(s)].block(*copy_stream);
      const cudaError_t status =
          cudaMemcpyAsync(ring[static_cast<size_t>(s)].data_ptr(), arena.data_ptr<uint8_t>() + part.begin,
                          static_cast<size_t>(part.bytes), cudaMemcpyHostToDevice, copy_stream->stream());
      FLUXBATCH_CHECK(status == cudaSuccess, DeviceError,
                      std::string("block streaming: copy to the device failed: ") + cudaGetErrorString(status));
      copied[static_cast<size_t>(s)].record(*copy_stream);
    }
#endif
    if (device.is_cpu()) ring[static_cast<size_t>(s)].narrow(0, 0, part.bytes).copy_(arena.narrow(0, part.begin, part.bytes));
    queue.emplace_back(b, s);
    ++copies;
  }

  // (Re)starts the ring at block `first`: nothing points at a slot, every slot is free once the
  // current stream's work so far is done, and the first slots take `first` and its successors.
  void start_ring(int first) {
    if (current_block >= 0) point(blocks[static_cast<size_t>(current_block)], blocks[static_cast<size_t>(current_block)].host);
    current_block = current_slot = -1;
#ifdef FLUXBATCH_WITH_CUDA
    if (device.is_cuda()) {
      const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device.index());
      for (at::cuda::CUDAEvent& e : used) e.record(compute);
    }
#endif
    queue.clear();
    int b = first;
    for (int s = 0; s < static_cast<int>(ring.size()); ++s) {
      issue(b, s);
      b = next_streamed(b);
    }
    next = b;
  }
};

BlockStreamer::BlockStreamer(torch::nn::Module& module, std::vector<torch::nn::Module*> blocks, c10::Device device,
                             int slots)
    : impl_(std::make_unique<Impl>(module, device, slots)) {
  FLUXBATCH_CHECK(slots >= 1, InputError, "block streaming: need at least one slot, got " + std::to_string(slots));
  const c10::InferenceMode inference;
  Impl& s = *impl_;
  std::set<const void*> taken;
  const auto collect = [&](Part& part, std::vector<at::Tensor> tensors) {
    for (at::Tensor& t : tensors) {
      if (taken.insert(t.unsafeGetTensorImpl()).second) part.tensors.push_back(std::move(t));
    }
  };
  s.blocks.resize(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) collect(s.blocks[i], module_tensors(*blocks[i]));
  collect(s.other, module_tensors(module));  // what no block holds
  int64_t total = 0;
  const auto lay_out = [&](Part& part) {
    part.begin = total;
    int64_t offset = 0;
    for (const at::Tensor& t : part.tensors) {
      part.offsets.push_back(offset);
      offset += aligned(static_cast<int64_t>(t.nbytes()));
    }
    part.bytes = offset;
    total += offset;
  };
  lay_out(s.other);
  for (Part& part : s.blocks) lay_out(part);
  if (device.is_cuda()) s.arena = pinned_block(total);
  if (!s.arena.defined()) s.arena = plain_block(total);
  const auto fill = [&](Part& part) {
    for (size_t j = 0; j < part.tensors.size(); ++j) {
      at::Tensor host = view_as_tensor(s.arena, part.begin + part.offsets[j], part.tensors[j]);
      host.copy_(part.tensors[j]);
      part.tensors[j].set_data(host);
      part.host.push_back(std::move(host));
    }
  };
  fill(s.other);
  for (Part& part : s.blocks) fill(part);
  release_scratch(module);
}

BlockStreamer::~BlockStreamer() {
#ifdef FLUXBATCH_WITH_CUDA
  // The copy stream may still read the host block that goes with this object.
  if (impl_->copy_stream) impl_->copy_stream->synchronize();
#endif
}

void BlockStreamer::to_device(int resident) {
  Impl& s = *impl_;
  resident = std::clamp(resident, 0, s.count());
  if (s.on_device && resident == s.resident) return;
  to_host();
  const c10::InferenceMode inference;
  s.resident = resident;
  s.to_device(s.other);
  for (int b = 0; b < resident; ++b) s.to_device(s.blocks[static_cast<size_t>(b)]);
  const int streamed = s.count() - resident;
  s.ring.clear();  // left over when an earlier call failed part-way (out of memory)
  s.queue.clear();
  if (streamed > 0) {
    s.slot_bytes = 0;
    for (int b = resident; b < s.count(); ++b) s.slot_bytes = std::max(s.slot_bytes, s.blocks[static_cast<size_t>(b)].bytes);
    const int slots = std::min(s.max_slots, streamed);
    s.views.assign(static_cast<size_t>(slots), {});
    for (int k = 0; k < slots; ++k) {
      s.ring.push_back(at::empty({std::max<int64_t>(s.slot_bytes, 1)}, at::TensorOptions().dtype(at::kByte).device(s.device)));
      for (int b = resident; b < s.count(); ++b) {
        const Part& part = s.blocks[static_cast<size_t>(b)];
        std::vector<at::Tensor> views;
        for (size_t j = 0; j < part.tensors.size(); ++j) views.push_back(view_as_tensor(s.ring.back(), part.offsets[j], part.tensors[j]));
        s.views[static_cast<size_t>(k)].push_back(std::move(views));
      }
    }
#ifdef FLUXBATCH_WITH_CUDA
    if (s.device.is_cuda()) {
      if (!s.copy_stream) s.copy_stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, s.device.index());
      s.copied = std::vector<at::cuda::CUDAEvent>(static_cast<size_t>(slots));
      s.used = std::vector<at::cuda::CUDAEvent>(static_cast<size_t>(slots));
    }
#endif
    s.start_ring(resident);
  }
  s.on_device = true;
}

void BlockStreamer::to_host() {
  Impl& s = *impl_;
  if (!s.on_device) return;
  const c10::InferenceMode inference;
#ifdef FLUXBATCH_WITH_CUDA
  if (s.device.is_cuda()) {
    // The slots go back to the allocator on this stream: its later work must follow the copies.
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(s.device.index());
    for (const auto& [block, slot] : s.queue) s.copied[static_cast<size_t>(slot)].block(current);
  }
#endif
  s.point(s.other, s.other.host);
  for (Part& part : s.blocks) s.point(part, part.host);
  s.queue.clear();
  s.views.clear();
  s.ring.clear();
  s.current_block = s.current_slot = -1;
  s.slot_bytes = 0;
  release_scratch(s.module);
  s.on_device = false;
}

void BlockStreamer::before_block(int64_t index) {
  Impl& s = *impl_;
  if (!s.on_device || index < s.resident || index >= s.count()) return;
  const int b = static_cast<int>(index);
  if (s.queue.empty() || s.queue.front().first != b || s.current_block >= 0) {
    s.start_ring(b);
    ++s.restarts;
  }
  const int slot = s.queue.front().second;
#ifdef FLUXBATCH_WITH_CUDA
  if (s.device.is_cuda()) s.copied[static_cast<size_t>(slot)].block(c10::cuda::getCurrentCUDAStream(s.device.index()));
#endif
  const c10::InferenceMode inference;
  s.point(s.blocks[static_cast<size_t>(b)], s.views[static_cast<size_t>(slot)][static_cast<size_t>(b - s.resident)]);
  s.current_block = b;
  s.current_slot = slot;
}

void BlockStreamer::after_block(int64_t index) {
  Impl& s = *impl_;
  if (!s.on_device || index != s.current_block) return;
  const int slot = s.current_slot;
#ifdef FLUXBATCH_WITH_CUDA
  if (s.device.is_cuda()) s.used[static_cast<size_t>(slot)].record(c10::cuda::getCurrentCUDAStream(s.device.index()));
#endif
  const c10::InferenceMode inference;
  Part& part = s.blocks[static_cast<size_t>(index)];
  s.point(part, part.host);
  s.current_block = s.current_slot = -1;
  s.queue.pop_front();
  s.issue(s.next, slot);
  s.next = s.next_streamed(s.next);
}

bool BlockStreamer::on_device() const { return impl_->on_device; }
int BlockStreamer::blocks() const { return impl_->count(); }
int BlockStreamer::resident() const { return impl_->resident; }
int BlockStreamer::slots() const { return static_cast<int>(impl_->ring.size()); }
int64_t BlockStreamer::block_bytes(int index) const { return impl_->blocks.at(static_cast<size_t>(index)).bytes; }
int64_t BlockStreamer::other_bytes() const { return impl_->other.bytes; }
int64_t BlockStreamer::host_bytes() const { return impl_->arena.defined() ? impl_->arena.numel() : 0; }
int64_t BlockStreamer::slot_bytes() const { return impl_->slot_bytes; }
int64_t BlockStreamer::copies() const { return impl_->copies; }
int64_t BlockStreamer::restarts() const { return impl_->restarts; }

int64_t BlockStreamer::streamed_bytes() const {
  int64_t total = 0;
  for (int b = impl_->resident; b < impl_->count(); ++b) total += impl_->blocks[static_cast<size_t>(b)].bytes;
  return total;
}

bool BlockStreamer::host_holds(const at::Tensor& t) const {
  const auto* begin = static_cast<const uint8_t*>(impl_->arena.data_ptr());
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  return p >= begin && p < begin + impl_->arena.numel() + (t.nbytes() == 0 ? 1 : 0);
}

}  // namespace fluxbatch::nn
