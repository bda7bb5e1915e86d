#include "fluxbatch/runtime/execution/graphed_denoiser.h"

#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/memory/oom.h"

#include <ATen/ATen.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

namespace fluxbatch::runtime::execution {
namespace {

std::atomic<int64_t> g_captures{0}, g_replays{0}, g_failures{0};

// A capture that failed twice in a process (an operation that never captures) is not tried again.
constexpr int64_t kFailuresBeforeGivingUp = 2;

}  // namespace

GraphStats graph_stats() { return {g_captures.load(), g_replays.load(), g_failures.load()}; }

#ifdef FLUXBATCH_WITH_CUDA
namespace {

// One side stream per device for the whole process: cuBLAS and cuBLASLt keep a workspace per stream,
// made on its first (eager) use, so a stream that served the warm-up step never allocates during capture.
c10::cuda::CUDAStream side_stream(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(device);
  if (it == streams.end()) it = streams.emplace(device, c10::cuda::getStreamFromPool(false, device)).first;
  return it->second;
}

// Runs `fn` on the side stream, ordered after the caller's stream's work so far, and makes the caller's
// stream wait for it: tensors cross between the two only at these joins, so the caching allocator's
// per-stream reuse stays safe without record_stream.
template <typename Fn>
auto on_side_stream(const at::Tensor& like, Fn&& fn) {
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(like.device().index());
  const c10::cuda::CUDAStream side = side_stream(like.device().index());
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  struct Join {
    c10::cuda::CUDAStream caller, side;
    ~Join() {
      at::cuda::CUDAEvent done;
      done.record(side);
      done.block(caller);
    }
  } join{caller, side};
  const c10::cuda::CUDAStreamGuard guard(side);
  return fn();
}

// at::cuda::CUDAGraph, and whether its capture got as far as handing the memory pool back to the
// allocator's bookkeeping (capture_end sets capture_ended_ after that), for cleaning up a failed one.
struct Capture : at::cuda::CUDAGraph {
  bool ended() const { return capture_ended_; }
  // The random generators the capture registered stay in capture mode when capture_end never runs, and
  // then refuse every later random draw on the device. capture_end's epilogue only clears that flag.
  void end_generator_captures() {
    for (auto& entry : captured_generator_states_) entry.first->capturing_ = false;
  }
};

// A capture that threw: end it on the stream (so the stream runs work again), stop routing the
// allocator to its pool (the routing filter points into the graph object about to go), give the pool
// back and take the random generators out of capture mode, unless capture_end already did.
void abandon(Capture& graph, c10::cuda::MempoolId_t pool, c10::DeviceIndex device, cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t broken = nullptr;
    if (cudaStreamEndCapture(stream, &broken) == cudaSuccess && broken) cudaGraphDestroy(broken);
  }
  (void)cudaGetLastError();  // capture errors are not sticky; clear the one just reported
  if (!graph.ended()) {
    graph.end_generator_captures();
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(device, pool);
    } catch (const std::exception&) {
      // capture_end had ended the routing before it failed
    }
    c10::cuda::CUDACachingAllocator::releasePool(device, pool);
  }
}

}  // namespace

struct GraphedDenoiser::Graph {
  Capture graph;
  c10::cuda::MempoolId_t pool{0, 0};
  at::Tensor latents, timestep, out;  // the captured step's input and output buffers
};
#else
struct GraphedDenoiser::Graph {};
#endif

GraphedDenoiser::GraphedDenoiser(sampling::Denoiser& eager, bool enabled, std::string what, int steps)
    : eager_(eager), enabled_(enabled && steps >= kMinGraphSteps), what_(std::move(what)) {}

GraphedDenoiser::~GraphedDenoiser() = default;

at::Tensor GraphedDenoiser::predict(const at::Tensor& latents, const at::Tensor& timestep) {
  ++calls_;
#ifdef FLUXBATCH_WITH_CUDA
  if (!enabled_ || failed_ || !latents.is_cuda() || g_failures.load() >= kFailuresBeforeGivingUp) {
    return eager_.predict(latents, timestep);
  }
  return on_side_stream(latents, [&]() -> at::Tensor {
    if (graph_) {
      graph_->latents.copy_(latents);
      graph_->timestep.copy_(timestep);
      graph_->graph.replay();
      ++replays_;
      ++g_replays;
      return graph_->out.clone();  // the next replay overwrites out
    }
    if (calls_ == 1) return eager_.predict(latents, timestep);  // warm-up: plans, workspaces, scratch
    // Capture the second step. The eager step's freed blocks go back to the device first, so the
    // graph's private pool can take their place under a tight budget.
    const auto start = std::chrono::steady_clock::now();
    c10::cuda::CUDACachingAllocator::emptyCache();
    auto graph = std::make_unique<Graph>();
    graph->latents = latents.clone();
    graph->timestep = timestep.clone();
    graph->pool = at::cuda::graph_pool_handle();
    try {
      graph->graph.capture_begin(graph->pool, cudaStreamCaptureModeThreadLocal);
      graph->out = eager_.predict(graph->latents, graph->timestep);
      graph->graph.capture_end();
    } catch (const std::exception& e) {
      abandon(graph->graph, graph->pool, latents.device().index(), c10::cuda::getCurrentCUDAStream());
      graph.reset();
      failed_ = true;
      ++g_failures;
      log::warn("CUDA graph capture of the denoising step failed (" + exception_message(e) + "); the steps of " +
                what_ + " run eagerly");
      c10::cuda::CUDACachingAllocator::emptyCache();
      return eager_.predict(latents, timestep);
    }
    graph->graph.replay();
    graph_ = std::move(graph);
    ++replays_;
    ++g_replays;
    ++g_captures;
    capture_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    char line[160];
    std::snprintf(line, sizeof line, "CUDA graph of the denoising step captured (%s) in %.0f ms", what_.c_str(),
                  capture_ms_);
    log::debug(line);
    return graph_->out.clone();
  });
#else
  return eager_.predict(latents, timestep);
#endif
}

}  // namespace fluxbatch::runtime::execution
