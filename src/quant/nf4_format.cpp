#include "fluxbatch/quant/nf4_format.h"

#include "fluxbatch/core/error.h"
#include "ftz.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <sstream>

namespace fluxbatch::quant {
namespace {

bool is_power_of_two_in(int64_t v, int64_t lo, int64_t hi) {
  return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

void check_tensor(const std::string& what, const char* field, const at::Tensor& t, at::ScalarType dtype,
                  int64_t numel, const c10::Device& device) {
  std::ostringstream msg;
  msg << what << ": NF4 " << field;
  if (!t.defined()) throw ModelError(msg.str() + " is missing");
  if (t.scalar_type() != dtype) {
    msg << " has dtype " << t.scalar_type() << ", expected " << dtype;
    throw ModelError(msg.str());
  }
  if (t.numel() != numel) {
    msg << " has " << t.numel() << " values, expected " << numel;
    throw ModelError(msg.str());
  }
  if (t.device() != device) {
    msg << " is on " << t.device() << ", the packed weights on " << device;
    throw ModelError(msg.str());
  }
  if (!t.is_contiguous()) throw ModelError(msg.str() + " is not contiguous");
}

at::Tensor moved(const at::Tensor& t, const c10::Device& device) {
  return t.defined() ? t.to(device) : t;
}

// bnb's kDequantizeBlockwise: FMUL.FTZ, then one rounding to T (round to nearest even).
template <typename T>
void dequantize_loop(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, T* out) {
  at::parallel_for(0, n, 1 << 16, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const uint8_t byte = packed[i >> 1];
      const int code = (i & 1) ? (byte & 0x0F) : (byte >> 4);
      const float value = detail::mul_ftz(kNf4Code[code], absmax[i / blocksize]);
      out[i] = static_cast<T>(value);
    }
  });
}

}  // namespace

int64_t Nf4Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Nf4Tensor Nf4Tensor::to(const c10::Device& device) const {
  Nf4Tensor result = *this;
  result.packed = moved(packed, device);
  result.absmax = moved(absmax, device);
  result.q8 = moved(q8, device);
  result.nested_absmax = moved(nested_absmax, device);
  result.nested_quant_map = moved(nested_quant_map, device);
  return result;
}

void Nf4Tensor::validate(const std::string& what) const {
  if (shape.empty()) throw ModelError(what + ": NF4 shape is empty");
  for (int64_t d : shape) {
    if (d <= 0) throw ModelError(what + ": NF4 shape has a dimension <= 0");
  }
  if (!is_power_of_two_in(blocksize, 32, 4096)) {
    throw ModelError(what + ": NF4 blocksize " + std::to_string(blocksize) +
                     " is not one bitsandbytes supports (a power of two from 32 to 4096)");
  }
  if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
    throw ModelError(what + ": NF4 dtype must be float32, float16 or bfloat16");
  }
  if (!packed.defined()) throw ModelError(what + ": NF4 packed weights are missing");
  const c10::Device dev = packed.device();
  check_tensor(what, "packed weights", packed, at::kByte, (numel() + 1) / 2, dev);
  if (packed.dim() != 1) throw ModelError(what + ": NF4 packed weights must be 1-D");
  if (!is_nested()) {
    check_tensor(what, "absmax", absmax, at::kFloat, n_blocks(), dev);
    return;
  }
  if (absmax.defined()) throw ModelError(what + ": NF4 tensor has both a float absmax and nested codes");
  if (!is_power_of_two_in(nested_blocksize, 32, 4096)) {
    throw ModelError(what + ": NF4 nested_blocksize " + std::to_string(nested_blocksize) + " is not supported");
  }
  check_tensor(what, "absmax codes (q8)", q8, at::kByte, n_blocks(), dev);
  check_tensor(what, "nested_absmax", nested_absmax, at::kFloat,
               (n_blocks() + nested_blocksize - 1) / nested_blocksize, dev);
  check_tensor(what, "nested_quant_map", nested_quant_map, at::kFloat, 256, dev);
}

at::Tensor nf4_block_absmax(const Nf4Tensor& w) {
  if (!w.is_nested()) return w.absmax.to(at::kCPU).contiguous();
  const at::Tensor q8 = w.q8.to(at::kCPU).contiguous();
  const at::Tensor scale = w.nested_absmax.to(at::kCPU).contiguous();
  const at::Tensor map = w.nested_quant_map.to(at::kCPU).contiguous();
  at::Tensor out = at::empty({q8.numel()}, at::kFloat);
  const uint8_t* codes = q8.data_ptr<uint8_t>();
  const float* scales = scale.data_ptr<float>();
  const float* values = map.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t b = 0; b < q8.numel(); ++b) {
    // Two roundings, as bnb runs them as two kernels (dequantize_blockwise, then += offset); volatile
    // keeps a compiler targeting FMA hardware from contracting them into one.
    volatile float product = detail::mul_ftz(values[codes[b]], scales[b / w.nested_blocksize]);
    dst[b] = product + w.offset;
  }
  return out;
}

void dequantize_nf4_into(const Nf4Tensor& w, at::Tensor& out) {
  w.validate("dequantize_nf4");
  FLUXBATCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.numel() == w.numel(),
                  std::invalid_argument, "dequantize_nf4: out must be a contiguous CPU tensor of w.numel() values");
  const at::Tensor packed = w.packed.to(at::kCPU).contiguous();
  const at::Tensor absmax = nf4_block_absmax(w);
  const uint8_t* src = packed.data_ptr<uint8_t>();
  const float* scales = absmax.data_ptr<float>();
  switch (out.scalar_type()) {
    case at::kFloat:
      dequantize_loop(src, scales, w.numel(), w.blocksize, out.data_ptr<float>());
      break;
    case at::kHalf:
      dequantize_loop(src, scales, w.numel(), w.blocksize, out.data_ptr<c10::Half>());
      break;
    case at::kBFloat16:
      dequantize_loop(src, scales, w.numel(), w.blocksize, out.data_ptr<c10::BFloat16>());
      break;
    default:
      throw std::invalid_argument("dequantize_nf4: out dtype must be float32, float16 or bfloat16");
  }
}

at::Tensor dequantize_nf4(const Nf4Tensor& w, c10::ScalarType dtype) {
  at::Tensor out = at::empty(w.shape, at::TensorOptions().dtype(dtype));
  dequantize_nf4_into(w, out);
  return out;
}

}  // namespace fluxbatch::quant
