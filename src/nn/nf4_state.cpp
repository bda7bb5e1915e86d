#include "fluxbatch/nn/nf4_state.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/bnb_quant_state.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/quant/nf4_format.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace fluxbatch::nn {
namespace {

const std::string kStateSuffix = ".weight.quant_state.bitsandbytes__nf4";
const std::string kBnbMarker = ".quant_state.bitsandbytes__";

c10::ScalarType scalar_type_of(const std::string& name) {
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  return c10::kFloat;  // io::parse_bnb_quant_state allows no other
}

io::BnbQuantState parse_quant_state(const std::string& key, const at::Tensor& bytes) {
  FLUXBATCH_CHECK(bytes.scalar_type() == at::kByte, ModelError, key + ": must be a uint8 tensor of UTF-8 JSON");
  const at::Tensor b = bytes.contiguous();
  return io::parse_bnb_quant_state(
      std::string_view(reinterpret_cast<const char*>(b.data_ptr<uint8_t>()), static_cast<size_t>(b.numel())), key);
}

// The tensor `key` as a 1-D CPU tensor of `dtype` and `count` values (ModelError otherwise), marked used.
at::Tensor take(const TensorMap& weights, std::set<std::string>& used, const std::string& key, c10::ScalarType dtype,
                int64_t count) {
  auto it = weights.find(key);
  FLUXBATCH_CHECK(it != weights.end(), ModelError, key + ": missing (needed by an NF4 weight)");
  const at::Tensor& t = it->second;
  FLUXBATCH_CHECK(t.scalar_type() == dtype, ModelError,
                  key + ": dtype " + std::string(c10::toString(t.scalar_type())) + ", expected " +
                      std::string(c10::toString(dtype)));
  FLUXBATCH_CHECK(t.numel() == count, ModelError,
                  key + ": " + std::to_string(t.numel()) + " values, expected " + std::to_string(count));
  used.insert(key);
  return t.reshape({count});
}

const char* dtype_text(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kFloat: return "float32";
    default: throw ModelError("NF4: unsupported dtype " + std::string(c10::toString(dtype)));
  }
}

}  // namespace

const std::string& bnb_nf4_state_suffix() { return kStateSuffix; }

quant::Nf4Tensor read_bnb_nf4(const TensorMap& weights, const std::string& p, std::set<std::string>* used) {
  const std::string state_key = p + kStateSuffix;
  auto state = weights.find(state_key);
  FLUXBATCH_CHECK(state != weights.end(), ModelError, state_key + ": missing (needed by the NF4 weight " + p + ".weight)");
  const io::BnbQuantState q = parse_quant_state(state_key, state->second);
  used->insert(state_key);
  quant::Nf4Tensor w;
  w.shape = q.shape;
  w.blocksize = q.blocksize;
  w.dtype = scalar_type_of(q.dtype);
  const int64_t numel = w.numel();
  const int64_t blocks = w.n_blocks();
  w.packed = take(weights, *used, p + ".weight", at::kByte, (numel + 1) / 2).contiguous();
  const at::Tensor map = take(weights, *used, p + ".weight.quant_map", at::kFloat, 16).contiguous();
  FLUXBATCH_CHECK(std::memcmp(map.data_ptr<float>(), quant::kNf4Code.data(), sizeof(float) * 16) == 0, ModelError,
                  p + ".weight.quant_map: is not the NF4 code table");
  if (!q.nested) {
    w.absmax = take(weights, *used, p + ".weight.absmax", at::kFloat, blocks).contiguous();
    return w;
  }
  w.q8 = take(weights, *used, p + ".weight.absmax", at::kByte, blocks).contiguous();
  w.nested_blocksize = q.nested_blocksize;
  w.offset = q.nested_offset;
  w.nested_absmax = take(weights, *used, p + ".weight.nested_absmax", at::kFloat,
                         (blocks + q.nested_blocksize - 1) / q.nested_blocksize)
                        .contiguous();
  w.nested_quant_map = take(weights, *used, p + ".weight.nested_quant_map", at::kFloat, 256).contiguous();
  return w;
}

void write_bnb_nf4(TensorMap& out, const std::string& p, const quant::Nf4Tensor& w) {
  w.validate(p + ".weight");
  nlohmann::json j = {{"quant_type", "nf4"}, {"blocksize", w.blocksize}, {"dtype", dtype_text(w.dtype)},
                      {"shape", w.shape}};
  out[p + ".weight"] = w.packed.reshape({w.packed.numel(), 1});
  out[p + ".weight.quant_map"] =
      at::from_blob(const_cast<float*>(quant::kNf4Code.data()), {16}, at::kFloat).clone();
  if (w.is_nested()) {
    j["nested_blocksize"] = w.nested_blocksize;
    j["nested_dtype"] = "float32";
    j["nested_offset"] = static_cast<double>(w.offset);  // a float is exact as a double, and JSON keeps it
    out[p + ".weight.absmax"] = w.q8;
    out[p + ".weight.nested_absmax"] = w.nested_absmax;
    out[p + ".weight.nested_quant_map"] = w.nested_quant_map;
  } else {
    out[p + ".weight.absmax"] = w.absmax;
  }
  const std::string text = j.dump();
  out[p + kStateSuffix] =
      at::from_blob(const_cast<char*>(text.data()), {static_cast<int64_t>(text.size())}, at::kByte).clone();
}

bool has_bnb_quant_state(const TensorMap& weights) {
  for (const auto& item : weights) {
    if (item.first.find(kBnbMarker) != std::string::npos) return true;
  }
  return false;
}

namespace {

std::map<std::string, std::shared_ptr<LinearImpl>> linear_modules(torch::nn::Module& module) {
  std::map<std::string, std::shared_ptr<LinearImpl>> linears;
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (auto linear = std::dynamic_pointer_cast<LinearImpl>(item.value())) linears.emplace(item.key(), linear);
  }
  return linears;
}

std::string describe(const LoadOptions& options) { return options.what.empty() ? std::string("model") : options.what; }

// Installs every bitsandbytes NF4 weight of `weights`; the keys it consumed go to `used`.
std::shared_ptr<at::Tensor> install_bnb(torch::nn::Module& module, const TensorMap& weights,
                                        const LoadOptions& options, std::set<std::string>& used) {
  const auto linears = linear_modules(module);
  const std::string what = describe(options);
  std::shared_ptr<at::Tensor> scratch;
  for (const auto& [key, tensor] : weights) {
    const auto marker = key.find(kBnbMarker);
    if (marker == std::string::npos) continue;
    FLUXBATCH_CHECK(ends_with(key, kStateSuffix), ModelError,
                    what + ": " + key + ": only bitsandbytes nf4 weight quantization is supported");
    const std::string p = key.substr(0, key.size() - kStateSuffix.size());
    auto linear = linears.find(p);
    FLUXBATCH_CHECK(linear != linears.end(), ModelError, what + ": " + key + ": the model has no Linear named " + p);
    if (!scratch) scratch = std::make_shared<at::Tensor>();
    try {
      linear->second->set_nf4(read_bnb_nf4(weights, p, &used).to(options.device), scratch, p + ".weight");
    } catch (const ModelError& e) {
      throw ModelError(what + ": " + e.what());
    }
  }
  return scratch;
}

TensorMap remaining(const TensorMap& weights, const std::set<std::string>& used) {
  TensorMap rest;
  for (const auto& item : weights) {
    if (used.count(item.first) == 0) rest.emplace(item.first, item.second);
  }
  return rest;
}

}  // namespace

std::shared_ptr<at::Tensor> load_nf4_state(torch::nn::Module& module, const TensorMap& weights,
                                           const LoadOptions& options) {
  std::set<std::string> used;
  std::shared_ptr<at::Tensor> scratch = install_bnb(module, weights, options, used);
  load_state(module, remaining(weights, used), options);
  return scratch;
}

std::shared_ptr<at::Tensor> load_state_quantizing_nf4(torch::nn::Module& module, const TensorMap& weights,
                                                      const LoadOptions& options,
                                                      const std::function<bool(const std::string&)>& quantize) {
  const std::string what = describe(options);
  std::set<std::string> used;
  std::shared_ptr<at::Tensor> scratch = install_bnb(module, weights, options, used);
  c10::NoGradGuard no_grad;
  for (const auto& [name, linear] : linear_modules(module)) {
    if (linear->is_nf4() || (quantize && !quantize(name))) continue;
    const std::string key = name + ".weight";
    auto it = weights.find(key);
    // Absent or of another shape: left to load_state, which reports it.
    if (it == weights.end() || !at::isFloatingType(it->second.scalar_type()) ||
        it->second.sizes() != at::IntArrayRef{linear->out_features(), linear->in_features()}) {
      continue;
    }
    // Quantized where it will live (a GPU quantizes in a blink), from bf16 as diffusers does with
    // torch_dtype=bfloat16; one tensor at a time, so host memory never holds a converted model.
    // (Scaled fp8 checkpoints: the weight times its scale_weight.)
    const at::Tensor dense =
        dense_weight(weights, key, options.quantize_device.value_or(options.device), at::kBFloat16);
    if (!scratch) scratch = std::make_shared<at::Tensor>();
    linear->set_nf4(quant::quantize_nf4(dense, /*double_quant=*/false, quant::BnbBackend::kCuda).to(options.device), scratch,
                    what + ": " + key);
    used.insert(key);
    used.insert(name + ".scale_weight");
    used.insert(name + ".scale_input");
  }
  load_state(module, remaining(weights, used), options);
  return scratch;
}

}  // namespace fluxbatch::nn
