// Loading bitsandbytes-serialized NF4 Linears (Linear4bit._save_to_state_dict + QuantState.as_dict(packed=True)):
//   <p>.weight                                uint8 [(N*K+1)/2, 1] (or 1-D)
//   <p>.weight.absmax                         float32 [ceil(N*K/64)]  (uint8 codes when nested)
//   <p>.weight.quant_map                      float32 [16], the NF4 table
//   <p>.weight.nested_absmax                  float32 [ceil(blocks/nested_blocksize)]  (nested only)
//   <p>.weight.nested_quant_map               float32 [256]                            (nested only)
//   <p>.weight.quant_state.bitsandbytes__nf4  uint8 UTF-8 JSON {quant_type, blocksize, dtype, shape
//                                             [, nested_blocksize, nested_dtype, nested_offset]}
#pragma once
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <set>
#include <string>

namespace fluxbatch::nn {

// Like load_state, after installing every NF4 weight of `weights` into the nn::Linear it names
// (LinearImpl::set_nf4; the quantized tensors go to options.device and keep their dtypes). Every
// NF4 layer shares one scratch buffer, which is returned (null when `weights` holds no NF4 weight).
// ModelError naming the key for anything inconsistent: not a Linear, bad JSON, quant_type other than
// nf4, blocksize other than 64, shape unlike the layer's, wrong dtype or count of any tensor, a
// quant_map other than the NF4 table, missing or partial nested statistics.
std::shared_ptr<at::Tensor> load_nf4_state(torch::nn::Module& module, const TensorMap& weights,
                                           const LoadOptions& options);

// Like load_nf4_state, and every other Linear weight of `weights` (floating, shaped like its layer) is
// quantized to NF4 on the way in, as diffusers' BitsAndBytesConfig(load_in_4bit=True,
// bnb_4bit_quant_type="nf4") does on a GPU: from bf16, blocksize 64, no double quantization, bnb's CUDA
// rounding, on options.device. One tensor at a time, from the mapped file: host memory never holds the
// dense model. `quantize`, when given, picks the Linears (by module name) to quantize; the others load
// dense (e.g. T5's feed-forward `wo`, which transformers' bitsandbytes quantizer skips).
std::shared_ptr<at::Tensor> load_state_quantizing_nf4(
    torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options,
    const std::function<bool(const std::string& linear_name)>& quantize = {});

// True when some key of `weights` is a bitsandbytes quant_state.
bool has_bnb_quant_state(const TensorMap& weights);

// "<p>.weight.quant_state.bitsandbytes__nf4": the key that marks Linear <p> as NF4.
const std::string& bnb_nf4_state_suffix();  // ".weight.quant_state.bitsandbytes__nf4"

// The NF4 weight of Linear `p` (the keys above), as CPU views of `weights` (no copy), checked as
// load_nf4_state checks it; every key it read goes to `used`. ModelError naming the key otherwise.
quant::Nf4Tensor read_bnb_nf4(const TensorMap& weights, const std::string& p, std::set<std::string>* used);

// The inverse: the keys bitsandbytes' Linear4bit._save_to_state_dict writes for `w` under Linear `p`
// (packed [n, 1], absmax or 8-bit codes, quant_map, nested statistics, the JSON quant state).
void write_bnb_nf4(TensorMap& out, const std::string& p, const quant::Nf4Tensor& w);

}  // namespace fluxbatch::nn
