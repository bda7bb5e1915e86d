// The scalars of fp8 attention's cuDNN calls (ops/fp8_attention.h), made on the device from the operands'
// per-image scales, so that a captured step replays with its own inputs' values.
#include "fluxbatch/ops/fp8_attention.h"
#include "fused_kernels.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fluxbatch::ops::detail {
namespace {

// One thread an image: the scalars of its cuDNN call (in fp8_attention_scalars_cuda's order, fused_kernels.h) and the output's scale.
__global__ void attention_scalars_kernel(const float* __restrict__ q_scale, const float* __restrict__ k_scale,
                                         const float* __restrict__ v_scale, int64_t images, float* __restrict__ params,
                                         float* __restrict__ out_scale) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= images) return;
  const float out = __fmul_rn(v_scale[b], kFp8AttentionOutMargin);
  // One 16-byte slot a scalar (cuDNN reads each through its own pointer).
  float* p = params + b * kFp8AttentionScalars * kFp8AttentionSlot;
  const float values[kFp8AttentionScalars] = {
      q_scale[b],                             // descale q
      k_scale[b],                             // descale k
      v_scale[b],                             // descale v
      1.0f / kFp8AttentionProbScale,          // descale s (exact: a power of two)
      kFp8AttentionProbScale,                 // scale s
      __fdiv_rn(1.0f, out),                   // scale o
      0.0f,                                   // amax s (cuDNN writes it)
      0.0f};                                  // amax o (cuDNN writes it)
#pragma unroll
  for (int i = 0; i < kFp8AttentionScalars; ++i) p[i * kFp8AttentionSlot] = values[i];
  out_scale[b] = out;
}

}  // namespace

void fp8_attention_scalars_cuda(const at::Tensor& q_scale, const at::Tensor& k_scale, const at::Tensor& v_scale,
                                at::Tensor& params, at::Tensor& out_scale) {
  const c10::cuda::CUDAGuard guard(params.device());
  const int64_t images = q_scale.numel();
  const int threads = 32;
  attention_scalars_kernel<<<static_cast<unsigned>((images + threads - 1) / threads), threads, 0,
                             at::cuda::getCurrentCUDAStream()>>>(
      q_scale.data_ptr<float>(), k_scale.data_ptr<float>(), v_scale.data_ptr<float>(), images,
      params.data_ptr<float>(), out_scale.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fluxbatch::ops::detail
