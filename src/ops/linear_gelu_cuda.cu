// out = GELU_tanh(x W^T + bias) through one cuBLASLt matmul with the GELU(_BIAS) epilogue: the bias and
// the activation are applied to the fp32 accumulator before the single rounding to the output type, and
// the hidden states are written once instead of written, read and written again.
// cuBLASLt is column-major: the row-major out [M, N] (row stride ldo) is the column-major D [N, M] with
// leading dimension ldo, D = op(A) op(B) with A = W ([N, K] row-major = [K, N] column-major, transposed)
// and B = x ([M, K] row-major = [K, M] column-major); the bias runs along D's rows, i.e. out's columns.
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

namespace fluxbatch::ops::detail {
namespace {

// Throws with cuBLASLt's status: only for calls that must not fail once an algorithm was found.
void check(cublasStatus_t status, const char* what) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "linear_gelu_cuda: ", what, " failed (cuBLAS status ",
              static_cast<int>(status), ")");
}

template <typename T, cublasStatus_t (*Destroy)(T)>
struct Handle {
  T value = nullptr;
  ~Handle() {
    if (value) Destroy(value);
  }
};

using Desc = Handle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Handle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Handle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

// The heuristic's first algorithm per problem. The query costs tens of microseconds of host time, a
// FLUX step makes ~60 such GEMMs, and under CUDA graph capture it would be paid again for nothing.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, bool, size_t, uintptr_t>;
struct Plan {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
std::mutex g_mutex;
std::map<Key, Plan> g_plans;

cudaDataType_t cuda_type(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kHalf: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

uintptr_t alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  return v % 256 == 0 ? 256 : v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : v % 4 == 0 ? 4 : 2;
}

}  // namespace

bool linear_gelu_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0), ldo = out.stride(0);
  if (m == 0 || n == 0) return true;
  const cudaDataType_t type = cuda_type(x.scalar_type());
  const bool has_bias = bias.defined();
  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  void* workspace = at::cuda::getCUDABlasLtWorkspace();
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();

  Desc op;
  check(cublasLtMatmulDescCreate(&op.value, CUBLAS_COMPUTE_32F,
                                 CUDA_R_32F),
        "cublasLtMatmulDescCreate");
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  check(cublasLtMatmulDescSetAttribute(op.value, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa), "TRANSA");
  check(cublasLtMatmulDescSetAttribute(op.value, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb), "TRANSB");
  const cublasLtEpilogue_t epilogue = has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  check(cublasLtMatmulDescSetAttribute(op.value, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue),
        "EPILOGUE");
  if (has_bias) {
    const void* bias_ptr = bias.data_ptr();
    check(cublasLtMatmulDescSetAttribute(op.value, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof bias_ptr),
          "BIAS_POINTER");
  }
  Layout a, b, d;
  check(cublasLtMatrixLayoutCreate(&a.value, type, k, n, k), "layout A");
  check(cublasLtMatrixLayoutCreate(&b.value, type, k, m, k), "layout B");
  check(cublasLtMatrixLayoutCreate(&d.value, type, n, m, ldo), "layout D");

  // Alignments enter the key: an algorithm chosen for 256-byte aligned buffers may need them.
  const uintptr_t align = std::min({alignment(x.data_ptr()), alignment(w.data_ptr()), alignment(out.data_ptr()),
                                    has_bias ? alignment(bias.data_ptr()) : uintptr_t(256)});
  const Key key{m, n, k, ldo, static_cast<int>(type), has_bias, workspace_size, align};
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
      Preference pref;
      check(cublasLtMatmulPreferenceCreate(&pref.value), "preference");
      check(cublasLtMatmulPreferenceSetAttribute(pref.value, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_size,
                                                 sizeof workspace_size),
            "workspace preference");
      const uint32_t align_bytes = static_cast<uint32_t>(align);
      for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
        check(cublasLtMatmulPreferenceSetAttribute(pref.value, attr, &align_bytes, sizeof align_bytes), "alignment");
      }
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const cublasStatus_t status =
          cublasLtMatmulAlgoGetHeuristic(handle, op.value, a.value, b.value, d.value, d.value, pref.value, 1, &result,
                                         &count);
      Plan found;
      found.found = status == CUBLAS_STATUS_SUCCESS && count > 0;
      if (found.found) found.algo = result.algo;
      it = g_plans.emplace(key, found).first;
    }
    plan = it->second;
  }
  if (!plan.found) return false;
  const float alpha = 1.0f, beta = 0.0f;
  check(cublasLtMatmul(handle, op.value, &alpha, w.data_ptr(), a.value, x.data_ptr(), b.value, &beta, out.data_ptr(),
                       d.value, out.data_ptr(), d.value, &plan.algo, workspace, workspace_size,
                       at::cuda::getCurrentCUDAStream()),
        "cublasLtMatmul");
  return true;
}

}  // namespace fluxbatch::ops::detail
