#include "fluxbatch/nn/fp8_state.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/ops/nf4_linear.h"
#include "fluxbatch/quant/fp8_format.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>

namespace fluxbatch::nn {
namespace {

std::map<std::string, std::shared_ptr<LinearImpl>> linears_of(torch::nn::Module& module) {
  std::map<std::string, std::shared_ptr<LinearImpl>> out;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (auto linear = std::dynamic_pointer_cast<LinearImpl>(item.value())) out.emplace(item.key(), linear);
  }
  return out;
}

}  // namespace

int load_state_fp8(torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options,
                   const LinearFilter& fp8) {
  const std::string what = options.what.empty() ? std::string("model") : options.what;
  const c10::Device device = options.quantize_device.value_or(options.device);
  TensorMap rest = weights;
  int count = 0;
  c10::NoGradGuard no_grad;
  for (const auto& [name, linear] : linears_of(module)) {
    if (!fp8(name) || linear->is_nf4()) continue;
    const std::string key = name + ".weight";
    const auto it = weights.find(key);
    // Absent or of another shape: left to load_state, which reports it.
    if (it == weights.end() || it->second.sizes() != at::IntArrayRef{linear->out_features(), linear->in_features()}) {
      continue;
    }
    const at::Tensor& stored = it->second;
    quant::Fp8Tensor w;
    if (stored.scalar_type() == at::kFloat8_e4m3fn) {
      // Kept as stored: the checkpoint's rounding is the model's.
      w = quant::fp8_from_checkpoint(stored.to(device), fp8_weight_scale(weights, key));
    } else if (at::isFloatingType(stored.scalar_type()) && !at::isFloat8Type(stored.scalar_type())) {
      // Quantized where it will run (a GPU quantizes in a blink), one tensor at a time.
      w = quant::quantize_fp8_per_channel(stored.to(device));
    } else {
      continue;  // e5m2 and the like: load_state converts them to the dense dtype
    }
    linear->set_fp8(w.to(options.device), what + ": " + key);
    rest.erase(key);
    rest.erase(name + ".scale_weight");
    rest.erase(name + ".scale_input");
    ++count;
  }
  load_state(module, rest, options);
  return count;
}

int nf4_layers_to_fp8(torch::nn::Module& module, const LinearFilter& fp8, bool keep_nf4) {
  int count = 0;
  c10::NoGradGuard no_grad;
  for (const auto& [name, linear] : linears_of(module)) {
    if (!fp8(name) || !linear->is_nf4()) continue;
    if (keep_nf4) {
      linear->compute_in_fp8();
    } else {
      const quant::Nf4Tensor& w = linear->nf4();
      linear->set_fp8(quant::quantize_fp8_per_channel(ops::nf4_dense_weight(w, w.dtype, nullptr)), name);
    }
    ++count;
  }
  return count;
}

int fp8_layer_count(const torch::nn::Module& module) {
  int count = 0;
  for (const auto& child : module.modules(/*include_self=*/true)) {
    const auto* linear = dynamic_cast<const LinearImpl*>(child.get());
    if (linear != nullptr && linear->takes_fp8()) ++count;
  }
  return count;
}

}  // namespace fluxbatch::nn
