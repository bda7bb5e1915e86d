// Row surgery on bitsandbytes-NF4 weights, for converting checkpoints whose fused Linears (BFL
// img_attn.qkv, txt_attn.qkv, single-block linear1, final_layer.adaLN_modulation.1) are NF4 packed, as
// in Forge's flux1-dev-bnb-nf4 (v1: double quantized, v2: float32 absmax). Used by weight_map.cpp's
// flux_bfl_to_diffusers; kept apart so the exactness rules can be tested on their own.
// Forge's key format (stable-diffusion-webui-forge backend/operations_bnb.py, ForgeLoader4Bit.
// _save_to_state_dict): "<p>.weight" plus "<p>.weight." + every key of bitsandbytes'
// QuantState.as_dict(packed=True) - absmax, quant_map, [nested_absmax, nested_quant_map],
// quant_state.bitsandbytes__nf4 - under "model.diffusion_model." + the BFL module path; the same
// serialization as a diffusers NF4 folder, in BFL layout. v2 only drops the nested statistics.
//
// NF4 blocks are consecutive values of the row-major flattened weight, so rows [r0, r1) of an [N, K]
// weight are exactly the blocks [r0*K/64, r1*K/64) whenever r0*K and r1*K are multiples of the
// blocksize: the packed bytes and the absmax split with no change of any dequantized value. With double
// quantization the 8-bit absmax codes split the same way, and the nested statistics (one float per 256
// blocks, one offset for the whole tensor) can be shared as long as every part starts on a nested block
// boundary: true for every fused FLUX.1 Linear (3072 x 3072 / 64 = 147456 blocks = 576 x 256), so full
// checkpoints keep their 8-bit absmax. Otherwise (tiny test models) the nested absmax is resolved to
// float32 exactly as bitsandbytes does (quant::nf4_block_absmax) and that is split: the same values,
// 4 bytes per block instead of 1.
#pragma once
#include "fluxbatch/quant/nf4_format.h"

#include <cstdint>
#include <string>
#include <vector>

namespace fluxbatch::models {

// Rows `rows` (summing to shape[0]) of the 2-D NF4 weight `w`, each as an NF4 weight of its own that
// dequantizes to exactly those rows of w. Zero-copy views of w's tensors unless the nested absmax must be
// resolved. ModelError "<what>: ..." when w is not 2-D, the rows do not add up, or a part does not start
// on a block boundary.
std::vector<quant::Nf4Tensor> split_nf4_rows(const quant::Nf4Tensor& w, const std::vector<int64_t>& rows,
                                             const std::string& what);

// The NF4 weight whose rows are those of `parts` in order (same columns, blocksize and dtype; every part
// but the last a whole number of blocks). Nested statistics stay 8-bit when the parts share them
// (same offset and map, nested block boundaries), else they are resolved to float32 as above.
quant::Nf4Tensor concat_nf4_rows(const std::vector<quant::Nf4Tensor>& parts, const std::string& what);

}  // namespace fluxbatch::models
