#include "fluxbatch/quant/dynamic8.h"

#include "fluxbatch/core/error.h"
#include "ftz.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fluxbatch::quant {
namespace {

// csrc/kernels.cu dQuantize<0>: a 7-step binary search from the middle of the map, then the fp32
// midpoint to the neighbour on x's side decides. Kept statement for statement.
uint8_t quantize_like_cuda(const float* code, float x) {
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = -1.0f;
  float upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

// csrc/common.cpp quantize_block: the code at or below x (BinSearch), then the right neighbour if it
// is strictly nearer. A block of zeros gives 0/0 = NaN, for which bnb's search yields 0.
uint8_t quantize_like_cpu(const float* code, float x) {
  if (std::isnan(x)) return 0;
  const float* above = std::upper_bound(code, code + 256, x);
  int64_t idx = std::max<int64_t>(0, (above - code) - 1);
  if (idx < 255) {
    const float dist_left = std::fabs(x - code[idx]);
    const float dist_right = std::fabs(x - code[idx + 1]);
    if (dist_right < dist_left) idx += 1;
  }
  return static_cast<uint8_t>(idx);
}

}  // namespace

at::Tensor create_dynamic_map() {
  // Same ATen ops as the Python source, so linspace rounds identically.
  constexpr int kMaxExponentBits = 7;
  // 10 ** (-(max_exponent_bits - 1) + i) as Python evaluates it (a double, 1 for i == 6).
  const double kScales[kMaxExponentBits] = {1e-06, 1e-05, 0.0001, 0.001, 0.01, 0.1, 1.0};
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int64_t fraction_items = (int64_t{1} << i) + 1;
    at::Tensor boundaries = at::linspace(0.1, 1.0, fraction_items, at::kFloat);
    at::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    at::Tensor pos = (means * kScales[i]).contiguous();
    at::Tensor neg = (means * -kScales[i]).contiguous();
    data.insert(data.end(), pos.data_ptr<float>(), pos.data_ptr<float>() + pos.numel());
    data.insert(data.end(), neg.data_ptr<float>(), neg.data_ptr<float>() + neg.numel());
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  FLUXBATCH_CHECK(data.size() == 256, std::logic_error, "dynamic map: expected 256 values");
  std::sort(data.begin(), data.end());
  return at::tensor(data, at::kFloat);
}

Dynamic8 quantize_dynamic8(const at::Tensor& x, int64_t blocksize, BnbBackend like) {
  FLUXBATCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), std::invalid_argument,
                  "quantize_dynamic8: expects a float32 CPU tensor");
  FLUXBATCH_CHECK(blocksize > 0, std::invalid_argument, "quantize_dynamic8: blocksize must be positive");
  const at::Tensor input = x.contiguous();
  const int64_t n = input.numel();
  const int64_t n_blocks = (n + blocksize - 1) / blocksize;

  Dynamic8 result;
  result.code = create_dynamic_map();
  // bnb's CPU kernel writes -1.0 into code[0] before searching, and the state keeps that map.
  if (like == BnbBackend::kCpu) result.code[0] = -1.0f;
  result.q8 = at::empty({n}, at::kByte);
  result.absmax = at::empty({n_blocks}, at::kFloat);

  const float* code = result.code.data_ptr<float>();
  const float* in = input.data_ptr<float>();
  uint8_t* q8 = result.q8.data_ptr<uint8_t>();
  float* absmax = result.absmax.data_ptr<float>();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t end = std::min(n, begin + blocksize);
    const bool ftz = like == BnbBackend::kCuda;
    float block_max = -std::numeric_limits<float>::max();
    for (int64_t i = begin; i < end; ++i) {
      block_max = std::fmax(block_max, std::fabs(ftz ? detail::flush_subnormal(in[i]) : in[i]));
    }
    absmax[b] = block_max;
    if (ftz) {
      // As in quantize_nf4: bnb's MUFU.RCP approximated by the correctly rounded reciprocal.
      const float reciprocal = 1.0f / block_max;
      for (int64_t i = begin; i < end; ++i) q8[i] = quantize_like_cuda(code, detail::mul_ftz(in[i], reciprocal));
    } else {
      for (int64_t i = begin; i < end; ++i) q8[i] = quantize_like_cpu(code, in[i] / block_max);
    }
  }
  return result;
}

at::Tensor dequantize_dynamic8(const Dynamic8& q, int64_t blocksize) {
  FLUXBATCH_CHECK(q.q8.scalar_type() == at::kByte && q.absmax.scalar_type() == at::kFloat &&
                      q.code.scalar_type() == at::kFloat && q.code.numel() == 256,
                  std::invalid_argument, "dequantize_dynamic8: expects uint8 codes, float32 absmax and map");
  const at::Tensor q8 = q.q8.cpu().contiguous();
  const at::Tensor absmax = q.absmax.cpu().contiguous();
  const at::Tensor code = q.code.cpu().contiguous();
  const int64_t n = q8.numel();
  FLUXBATCH_CHECK(absmax.numel() == (n + blocksize - 1) / blocksize, std::invalid_argument,
                  "dequantize_dynamic8: absmax has the wrong number of blocks");
  at::Tensor out = at::empty({n}, at::kFloat);
  const uint8_t* in = q8.data_ptr<uint8_t>();
  const float* scale = absmax.data_ptr<float>();
  const float* map = code.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) dst[i] = detail::mul_ftz(map[in[i]], scale[i / blocksize]);
  return out;
}

}  // namespace fluxbatch::quant
