// fp8 attention through cuDNN's fp8 flash attention (cudnn-frontend's sdpa_fp8 graph), one call an image. The
// frontend is header-only and reaches cuDNN through dlopen (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING): libtorch has
// libcudnn.so.9 loaded already, so this adds no link dependency. A graph is built once per shape and layout
// (heuristics and plan choice take milliseconds, outside any CUDA graph capture: the first step runs eagerly) and
// executed with each call's pointers; the scalars live on the device (fp8_attention_scalars_cuda), so a captured
// step replays with the values of its own inputs.
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>

namespace fe = cudnn_frontend;

// The frontend's handle on libcudnn (declared by it for dynamic loading; one definition in the program).
void* cudnn_frontend::cudnn_dlhandle = nullptr;

namespace fluxbatch::ops::detail {
namespace {

enum Uid : int64_t { kQ = 1, kK, kV, kO, kDescaleQ, kDescaleK, kDescaleV, kDescaleS, kScaleS, kScaleO, kAmaxS, kAmaxO };

std::mutex& cudnn_mutex() {
  static std::mutex mutex;
  return mutex;
}

bool load_cudnn() {
  static const bool loaded = [] {
    void* handle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    if (handle == nullptr) handle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL);
    cudnn_frontend::cudnn_dlhandle = handle;
    return handle != nullptr;
  }();
  return loaded;
}

// One cuDNN handle per device, for the process (cudnn_mutex held).
cudnnHandle_t handle_for(int device) {
  static std::map<int, cudnnHandle_t> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cudnnHandle_t handle = nullptr;
  if (fe::detail::create_handle(&handle) != CUDNN_STATUS_SUCCESS) {
    throw std::runtime_error("fp8 attention: cuDNN could not create a handle on cuda:" + std::to_string(device));
  }
  handles[device] = handle;
  return handle;
}

void check(fe::error_t status, const char* step, const std::string& shape) {
  if (status.is_bad()) {
    throw std::runtime_error("fp8 attention: cuDNN " + std::string(step) + " failed for " + shape + ": " +
                             status.get_message());
  }
}

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
};

// Q, K, V of one image as [1, H, S, D] with token rows ld values apart; O contiguous [S, H, D].
Plan build(cudnnHandle_t handle, int64_t heads, int64_t sq, int64_t skv, int64_t d, int64_t ldq, int64_t ldk,
           int64_t ldv) {
  const std::string shape = "[H, Sq, Skv, D] = [" + std::to_string(heads) + ", " + std::to_string(sq) + ", " +
                            std::to_string(skv) + ", " + std::to_string(d) + "]";
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::FP8_E4M3)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto operand = [&](const char* name, Uid uid, int64_t s, int64_t ld) {
    return graph->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({1, heads, s, d})
                             .set_stride({s * ld, d, ld, 1})
                             .set_data_type(fe::DataType_t::FP8_E4M3));
  };
  auto scalar = [&](const char* name, Uid uid) {
    return graph->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({1, 1, 1, 1})
                             .set_stride({1, 1, 1, 1})
                             .set_data_type(fe::DataType_t::FLOAT));
  };
  auto q = operand("q", kQ, sq, ldq), k = operand("k", kK, skv, ldk), v = operand("v", kV, skv, ldv);
  auto options = fe::graph::SDPA_fp8_attributes()
                     .set_name("fp8_attention")
                     .set_generate_stats(false)
                     .set_attn_scale(1.0f / std::sqrt(static_cast<float>(d)));
  auto [o, stats, amax_s, amax_o] =
      graph->sdpa_fp8(q, k, v, scalar("descale_q", kDescaleQ), scalar("descale_k", kDescaleK),
                      scalar("descale_v", kDescaleV), scalar("descale_s", kDescaleS), scalar("scale_s", kScaleS),
                      scalar("scale_o", kScaleO), options);
  (void)stats;  // none for inference
  o->set_output(true).set_uid(kO).set_dim({1, heads, sq, d}).set_stride({sq * heads * d, d, heads * d, 1})
      .set_data_type(fe::DataType_t::FP8_E4M3);
  for (auto& [amax, uid] : {std::make_pair(amax_s, kAmaxS), std::make_pair(amax_o, kAmaxO)}) {
    amax->set_output(true).set_uid(uid).set_dim({1, 1, 1, 1}).set_stride({1, 1, 1, 1})
        .set_data_type(fe::DataType_t::FLOAT);
  }
  check(graph->validate(), "validate", shape);
  check(graph->build_operation_graph(handle), "build_operation_graph", shape);
  check(graph->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", shape);
  check(graph->check_support(handle), "check_support", shape);
  check(graph->build_plans(handle, fe::BuildPlanPolicy_t::HEURISTICS_CHOICE), "build_plans", shape);
  Plan plan;
  check(graph->get_workspace_size(plan.workspace), "get_workspace_size", shape);
  plan.graph = std::move(graph);
  return plan;
}

}  // namespace

bool fp8_attention_cudnn_available(int device_index) {
  if (!load_cudnn()) return false;
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(device_index);
  const auto version = fe::detail::get_backend_version();
  return props->major >= 9 && version >= 90100 && version != 91000;
}

void fp8_attention_cudnn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t head_dim,
                         const at::Tensor& params, at::Tensor& out) {
  TORCH_CHECK(load_cudnn(), "fp8 attention: libcudnn.so.9 could not be loaded");
  const c10::cuda::CUDAGuard guard(q.device());
  const int device = q.device().index();
  const int64_t images = q.size(0), sq = q.size(1), skv = k.size(1), heads = q.size(2) / head_dim;
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  cudnnHandle_t handle = handle_for(device);
  static std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>, Plan> plans;
  const auto key = std::make_tuple(device, heads, sq, skv, head_dim, q.stride(1), k.stride(1), v.stride(1));
  auto it = plans.find(key);
  if (it == plans.end()) {
    it = plans.emplace(key, build(handle, heads, sq, skv, head_dim, q.stride(1), k.stride(1), v.stride(1))).first;
  }
  Plan& plan = it->second;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (fe::detail::set_stream(handle, stream) != CUDNN_STATUS_SUCCESS) {
    throw std::runtime_error("fp8 attention: cuDNN could not take the current stream");
  }
  const at::Tensor workspace = at::empty({std::max<int64_t>(plan.workspace, 1)}, q.options().dtype(at::kByte));
  auto byte_ptr = [](const at::Tensor& t) { return static_cast<char*>(const_cast<void*>(t.const_data_ptr())); };
  float* scalars = params.data_ptr<float>();
  const int64_t per_image = int64_t(kFp8AttentionScalars) * kFp8AttentionSlot;
  for (int64_t b = 0; b < images; ++b) {
    float* p = scalars + b * per_image;
    std::unordered_map<int64_t, void*> pack = {
        {kQ, byte_ptr(q) + b * q.stride(0)},       {kK, byte_ptr(k) + b * k.stride(0)},
        {kV, byte_ptr(v) + b * v.stride(0)},       {kO, byte_ptr(out) + b * out.stride(0)},
        {kDescaleQ, p + 0 * kFp8AttentionSlot},    {kDescaleK, p + 1 * kFp8AttentionSlot},
        {kDescaleV, p + 2 * kFp8AttentionSlot},    {kDescaleS, p + 3 * kFp8AttentionSlot},
        {kScaleS, p + 4 * kFp8AttentionSlot},      {kScaleO, p + 5 * kFp8AttentionSlot},
        {kAmaxS, p + 6 * kFp8AttentionSlot},       {kAmaxO, p + 7 * kFp8AttentionSlot}};
    check(plan.graph->execute(handle, pack, plan.workspace > 0 ? workspace.data_ptr() : nullptr), "execute",
          "image " + std::to_string(b));
  }
}

}  // namespace fluxbatch::ops::detail
