// quantize_nf4: the CPU reference of bnb quantize_4bit(quant_type="nf4", blocksize=64), and the dispatch
// to the CUDA kernel (nf4_quantize_cuda.cu) for CUDA tensors quantized like bnb on a GPU.
#include "fluxbatch/core/error.h"
#include "fluxbatch/quant/dynamic8.h"
#include "fluxbatch/quant/nf4_format.h"
#include "ftz.h"
#include "nf4_code_tree.h"
#include "nf4_quantize_cuda.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

namespace fluxbatch::quant {
namespace {

using detail::nf4_code_like_cuda;

// backends/default quantize_4bit: argmin |clamp(x, -1, 1) - code| in float32, first minimum wins;
// torch.argmin takes NaN as the minimum, so NaN gives code 0.
uint8_t nf4_code_like_cpu(float x) {
  if (std::isnan(x)) return 0;
  const float clamped = std::fmin(std::fmax(x, -1.0f), 1.0f);
  uint8_t best = 0;
  float best_dist = std::fabs(clamped - kNf4Code[0]);
  for (uint8_t i = 1; i < 16; ++i) {
    const float dist = std::fabs(clamped - kNf4Code[i]);
    if (dist < best_dist) {
      best = i;
      best_dist = dist;
    }
  }
  return best;
}

uint8_t nf4_code(float x, BnbBackend like) {
  return like == BnbBackend::kCuda ? nf4_code_like_cuda(x) : nf4_code_like_cpu(x);
}

// Codes of every value, two per byte. An odd count pads the last low nibble with the code of 0.0
// scaled like its block, as the CUDA kernel loads the missing value as zero.
//   kCuda: max and scaling flush subnormals (see ftz.h). Its reciprocal is MUFU.RCP, an approximation
//          within 1 ulp that no CPU can reproduce; here it is the correctly rounded 1 / absmax, so a
//          value within about an ulp of a threshold can take the neighbouring code (exact whenever the
//          two reciprocals agree, e.g. for powers of two).
//   kCpu:  plain IEEE arithmetic, the same correctly rounded reciprocal.
void quantize_blocks(const float* in, int64_t n, int64_t blocksize, BnbBackend like, uint8_t* packed,
                     float* absmax) {
  const bool ftz = like == BnbBackend::kCuda;
  auto scaled = [&](float x, float reciprocal) { return ftz ? detail::mul_ftz(x, reciprocal) : x * reciprocal; };
  auto quantize_block = [&](int64_t b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min(n, begin + blocksize);
    float block_max = -std::numeric_limits<float>::max();
    for (int64_t i = begin; i < end; ++i) {
      block_max = std::fmax(block_max, std::fabs(ftz ? detail::flush_subnormal(in[i]) : in[i]));
    }
    absmax[b] = block_max;
    // Both backends multiply by the float32 reciprocal (1 / absmax), never divide.
    const float reciprocal = 1.0f / block_max;
    for (int64_t i = begin; i < end; i += 2) {
      const float second = i + 1 < end ? in[i + 1] : 0.0f;
      const uint8_t high = nf4_code(scaled(in[i], reciprocal), like);
      const uint8_t low = nf4_code(scaled(second, reciprocal), like);
      packed[i / 2] = static_cast<uint8_t>((high << 4) | low);
    }
  };
  // Blocks are independent and start on whole bytes (blocksize is even): threads change nothing.
  const int64_t n_blocks = (n + blocksize - 1) / blocksize;
  at::parallel_for(0, n_blocks, 1024, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) quantize_block(b);
  });
}

}  // namespace

Nf4Tensor quantize_nf4(const at::Tensor& w, bool double_quant, BnbBackend like) {
  const at::ScalarType dtype = w.scalar_type();
  FLUXBATCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, std::invalid_argument,
                  "quantize_nf4: weights must be float32, float16 or bfloat16");
  FLUXBATCH_CHECK(w.numel() > 0, std::invalid_argument, "quantize_nf4: empty tensor");
  const int64_t n = w.numel();
  Nf4Tensor result;
  result.shape = w.sizes().vec();
  result.blocksize = kNf4BlockSize;
  result.dtype = dtype;
  at::Tensor absmax;
#ifdef FLUXBATCH_WITH_CUDA
  if (w.is_cuda() && like == BnbBackend::kCuda) {
    // On the GPU, as bnb: from w's own dtype, no float32 copy, no trip through host memory.
    const at::Tensor input = w.contiguous();
    result.packed = at::empty({(n + 1) / 2}, w.options().dtype(at::kByte));
    absmax = at::empty({result.n_blocks()}, w.options().dtype(at::kFloat));
    detail::quantize_nf4_blocks_cuda(input, result.blocksize, result.packed, absmax);
  }
#endif
  if (!absmax.defined()) {
    // Exact: every float16 / bfloat16 value is a float32.
    const at::Tensor input = w.to(at::kCPU).to(at::kFloat).contiguous();
    result.packed = at::empty({(n + 1) / 2}, at::kByte);
    absmax = at::empty({result.n_blocks()}, at::kFloat);
    quantize_blocks(input.data_ptr<float>(), n, result.blocksize, like, result.packed.data_ptr<uint8_t>(),
                    absmax.data_ptr<float>());
  }

  if (!double_quant) {
    result.absmax = absmax;
    return result.to(w.device());
  }
  // bnb: offset = absmax.mean() (an ATen reduction on bnb's device), then the 8-bit blockwise
  // quantization of absmax - offset.
  const c10::Device mean_device = like == BnbBackend::kCuda ? w.device() : c10::Device(at::kCPU);
  result.offset = absmax.to(mean_device).mean().item<float>();
  const Dynamic8 nested = quantize_dynamic8((absmax - result.offset).to(at::kCPU), kNf4NestedBlockSize, like);
  result.q8 = nested.q8;
  result.nested_absmax = nested.absmax;
  result.nested_quant_map = nested.code;
  result.nested_blocksize = kNf4NestedBlockSize;
  return result.to(w.device());
}

}  // namespace fluxbatch::quant
