// Loading models for --compute fp8: the Linears a filter picks get per-channel e4m3 weights
// (LinearImpl::set_fp8), quantized on the device one tensor at a time from dense checkpoint weights, taken
// as stored from fp8 checkpoints (ComfyUI / Kijai: a plain float8_e4m3fn cast, or "scaled fp8" with a
// per-tensor `<p>.scale_weight`), or made from NF4 weights already installed.
#pragma once
#include "fluxbatch/nn/weights.h"

#include <functional>
#include <string>

namespace torch::nn {
class Module;
}

namespace fluxbatch::nn {

using LinearFilter = std::function<bool(const std::string& linear_name)>;

// Like load_state, with every Linear `fp8` picks whose weight `weights` holds (floating, or e4m3 with an
// optional `<name>.scale_weight`) installed as fp8 on options.device; the rest loads as load_state does.
// Returns the number of fp8 layers. ModelError naming the key for a scale that is not one positive float.
int load_state_fp8(torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options,
                   const LinearFilter& fp8);

// The NF4 Linears `fp8` picks: with keep_nf4, left NF4 and computed in fp8 from a per-call copy
// (LinearImpl::compute_in_fp8); otherwise replaced by per-channel e4m3 weights made on their device from
// the dequantized weight (bnb's values, in their dtype), one tensor at a time. Returns the count.
int nf4_layers_to_fp8(torch::nn::Module& module, const LinearFilter& fp8, bool keep_nf4);

// The number of Linears of `module` computing in fp8 (LinearImpl::takes_fp8()).
int fp8_layer_count(const torch::nn::Module& module);

}  // namespace fluxbatch::nn
