// bitsandbytes NF4 weights (quant_type "nf4"): 4-bit codes into a fixed 16-value table, scaled by the
// absolute maximum of each block of `blocksize` consecutive values of the row-major flattened tensor.
// Optionally the float32 absmax is itself "double quantized": absmax - offset stored as 8-bit dynamic
// codes in blocks of 256 (see quant/dynamic8.h). The layout and every rounding follow bitsandbytes
// 0.49.2 so that weights quantized here or loaded from a bnb / Forge checkpoint dequantize to the
// exact values bitsandbytes produces.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::quant {

// bnb get_4bit_type("nf4") == csrc/kernels.cu nf4_dequantization_lut; index = 4-bit code.
inline constexpr std::array<float, 16> kNf4Code = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

inline constexpr int64_t kNf4BlockSize = 64;         // bnb's default for 4-bit, used by every FLUX file
inline constexpr int64_t kNf4NestedBlockSize = 256;  // bnb quantize_4bit(compress_statistics=True)

// Which bitsandbytes implementation's rounding to reproduce when quantizing. They store the same
// layout but disagree on values exactly on some NF4 thresholds (CUDA: a decision tree, ties go down;
// CPU: argmin of the distance), for double quantization on the 8-bit codes and on
// nested_quant_map[0] (the CPU backend overwrites it with -1.0), and on subnormals (the CUDA build
// flushes them). Checkpoints made on a GPU (diffusers, Forge) come from kCuda. kCpu is bit-exact with
// bnb's CPU backend; kCuda is bit-exact with bnb on CUDA except for values within about an ulp of an
// NF4 / 8-bit threshold, where bnb's approximate reciprocal (MUFU.RCP) can round the other way.
enum class BnbBackend { kCuda, kCpu };

struct Nf4Tensor {
  at::Tensor packed;  // uint8 [(numel + 1) / 2]; value 2k is the high nibble of byte k, 2k+1 the low
  at::Tensor absmax;  // float32 [n_blocks]; undefined when nested

  // Double quantization (all undefined / unused when not nested):
  // absmax[b] = float(float(nested_quant_map[q8[b]] * nested_absmax[b / nested_blocksize]) + offset)
  at::Tensor q8;                // uint8 [n_blocks]
  at::Tensor nested_absmax;     // float32 [ceil(n_blocks / nested_blocksize)]
  at::Tensor nested_quant_map;  // float32 [256]
  float offset = 0.0f;
  int64_t nested_blocksize = kNf4NestedBlockSize;

  std::vector<int64_t> shape;  // the original tensor's shape, e.g. [out, in]
  int64_t blocksize = kNf4BlockSize;
  c10::ScalarType dtype = c10::kBFloat16;  // bnb quant_state.dtype: what dequantize produces

  bool is_nested() const { return q8.defined(); }
  int64_t numel() const;
  int64_t n_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  c10::Device device() const { return packed.device(); }
  // Every tensor moved (not converted) to `device`.
  Nf4Tensor to(const c10::Device& device) const;
  // Throws ModelError("<what>: ...") unless sizes, dtypes, devices and block sizes are consistent.
  void validate(const std::string& what) const;
};

// Quantizes `w` (float32 / float16 / bfloat16, any device, any shape) like bnb
// quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant) on `like`.
// The result lives on w's device and has dtype = w's dtype. The double-quant offset is
// absmax.mean() computed with ATen on w's device for kCuda (on the CPU for kCpu), as bnb does: a CPU
// tensor quantized "like kCuda" can differ from a GPU bnb run in that mean's last bit.
Nf4Tensor quantize_nf4(const at::Tensor& w, bool double_quant, BnbBackend like = BnbBackend::kCuda);

// CPU reference of bnb dequantize_4bit on CUDA: out[i] = dtype(kNf4Code[code(i)] * absmax[i / blocksize]),
// the fp32 product rounded once (round to nearest even), a subnormal product flushed to a signed zero
// as bnb's fast-math build does. (bnb's CPU backend agrees except that its float32 output keeps
// subnormal products.) Returns a CPU tensor of w.shape; `dtype` float32, float16 or bfloat16.
at::Tensor dequantize_nf4(const Nf4Tensor& w, c10::ScalarType dtype);
// Same into `out` (CPU, contiguous, numel == w.numel(), floating dtype as above).
void dequantize_nf4_into(const Nf4Tensor& w, at::Tensor& out);

// The float32 absmax of every block [n_blocks] on the CPU, resolving double quantization the way bnb
// does (dequantize_blockwise then += offset, two fp32 roundings).
at::Tensor nf4_block_absmax(const Nf4Tensor& w);

}  // namespace fluxbatch::quant
