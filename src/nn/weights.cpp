#include "fluxbatch/nn/weights.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/io/safetensors_writer.h"
#include "fluxbatch/io/shard_index.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <cmath>
#include <sstream>

namespace fluxbatch::nn {
namespace {

c10::ScalarType to_scalar_type(io::DType dtype) {
  switch (dtype) {
    case io::DType::kF64: return c10::kDouble;
    case io::DType::kF32: return c10::kFloat;
    case io::DType::kF16: return c10::kHalf;
    case io::DType::kBF16: return c10::kBFloat16;
    case io::DType::kF8_E4M3: return c10::kFloat8_e4m3fn;
    case io::DType::kF8_E5M2: return c10::kFloat8_e5m2;
    case io::DType::kI64: return c10::kLong;
    case io::DType::kI32: return c10::kInt;
    case io::DType::kI16: return c10::kShort;
    case io::DType::kI8: return c10::kChar;
    case io::DType::kU8: return c10::kByte;
    case io::DType::kBool: return c10::kBool;
    case io::DType::kU16: return c10::kUInt16;
    case io::DType::kU32: return c10::kUInt32;
    case io::DType::kU64: return c10::kUInt64;
  }
  throw ModelError("unsupported safetensors dtype");
}

void add_file(const std::string& path, const std::string& strip_prefix, TensorMap* out,
              std::map<std::string, std::string>* origin) {
  auto file = io::SafetensorsFile::open(path);
  for (const auto& view : file->tensors()) {
    if (view.name.compare(0, strip_prefix.size(), strip_prefix) != 0) continue;
    const std::string name = view.name.substr(strip_prefix.size());
    auto [it, inserted] = origin->emplace(name, path);
    if (!inserted) {
      throw ModelError("tensor '" + view.name + "' is in both " + it->second + " and " + path);
    }
    (*out)[name] = to_tensor(file, view.name);
  }
}

}  // namespace

std::vector<std::string> shard_files(const std::string& index_path) { return io::read_shard_index(index_path).shards; }

at::Tensor to_tensor(const std::shared_ptr<io::SafetensorsFile>& file, const std::string& name) {
  const io::TensorView& view = file->at(name);
  const auto options = at::TensorOptions().dtype(to_scalar_type(view.dtype)).device(at::kCPU);
  if (view.nbytes == 0) return at::empty(view.shape, options);
  void* data = const_cast<uint8_t*>(view.data);
  const size_t alignment = io::dtype_size(view.dtype);
  if (reinterpret_cast<uintptr_t>(data) % alignment != 0) {
    // Misaligned spans (legal in the format) would break vectorized kernels: copy them.
    at::Tensor copy = at::empty(view.shape, options);
    std::memcpy(copy.data_ptr(), view.data, view.nbytes);
    return copy;
  }
  std::shared_ptr<io::SafetensorsFile> keep_alive = file;
  return at::from_blob(data, view.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
}

TensorMap read_safetensors(const std::vector<std::string>& paths, const std::string& strip_prefix) {
  TensorMap out;
  std::map<std::string, std::string> origin;
  for (const auto& path : paths) {
    if (!ends_with(path, ".index.json")) {
      add_file(path, strip_prefix, &out, &origin);
      continue;
    }
    const io::ShardIndex index = io::read_shard_index(path);
    std::map<std::string, std::string> shard_origin;
    TensorMap shard_tensors;
    for (const auto& shard : index.shards) add_file(shard, strip_prefix, &shard_tensors, &shard_origin);
    for (const auto& [tensor, shard] : index.weight_map) {
      if (tensor.compare(0, strip_prefix.size(), strip_prefix) != 0) continue;
      auto it = shard_origin.find(tensor.substr(strip_prefix.size()));
      if (it == shard_origin.end() || it->second != shard) {
        throw ModelError(path + ": tensor '" + tensor + "' is listed in " + shard + " but is not there");
      }
    }
    for (auto& [name, tensor] : shard_tensors) {
      auto [it, inserted] = origin.emplace(name, shard_origin[name]);
      if (!inserted) throw ModelError("tensor '" + name + "' is in both " + it->second + " and " + shard_origin[name]);
      out[name] = std::move(tensor);
    }
  }
  return out;
}

void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  static const std::map<c10::ScalarType, io::DType> kTypes = {
      {c10::kDouble, io::DType::kF64},         {c10::kFloat, io::DType::kF32},
      {c10::kHalf, io::DType::kF16},           {c10::kBFloat16, io::DType::kBF16},
      {c10::kFloat8_e4m3fn, io::DType::kF8_E4M3}, {c10::kFloat8_e5m2, io::DType::kF8_E5M2},
      {c10::kLong, io::DType::kI64},           {c10::kInt, io::DType::kI32},
      {c10::kShort, io::DType::kI16},          {c10::kChar, io::DType::kI8},
      {c10::kByte, io::DType::kU8},            {c10::kBool, io::DType::kBool},
      {c10::kUInt16, io::DType::kU16},         {c10::kUInt32, io::DType::kU32},
      {c10::kUInt64, io::DType::kU64}};
  io::SafetensorsWriter writer;
  std::vector<at::Tensor> keep;  // CPU contiguous copies live until the file is written
  for (const auto& [name, tensor] : tensors) {
    auto type = kTypes.find(tensor.scalar_type());
    if (type == kTypes.end()) {
      throw ModelError(path + ": tensor '" + name + "' has dtype " + std::string(c10::toString(tensor.scalar_type())) +
                       ", which safetensors cannot store");
    }
    keep.push_back(tensor.to(at::kCPU).contiguous());
    writer.add_view(name, type->second, tensor.sizes().vec(), keep.back().data_ptr(), keep.back().nbytes());
  }
  for (const auto& [key, value] : metadata) writer.set_metadata(key, value);
  writer.write(path);
}

namespace {

struct Mismatch {
  std::vector<std::string> lines;
  size_t missing = 0, unexpected = 0, shape = 0;
};

bool ignored(const std::string& key, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes) {
    if (key.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

// Floating checkpoint tensors follow options.dtype; integer/bool ones (packed quantized data,
// ids) keep theirs. The cast happens on whichever side moves fewer bytes.
at::Tensor convert(const at::Tensor& source, const LoadOptions& options) {
  const bool floating = at::isFloatingType(source.scalar_type());
  const c10::ScalarType target = floating ? options.dtype : source.scalar_type();
  if (source.device() == options.device) return source.to(target).contiguous();
  if (c10::elementSize(target) <= source.element_size()) return source.to(target).to(options.device);
  return source.to(options.device).to(target);
}

void throw_mismatch(const Mismatch& m, const LoadOptions& options) {
  std::ostringstream out;
  out << (options.what.empty() ? std::string("model") : options.what) << ": the checkpoint does not match the model ("
      << m.missing << " missing, " << m.unexpected << " unexpected, " << m.shape << " with a different shape)";
  constexpr size_t kListed = 10;
  for (size_t i = 0; i < m.lines.size() && i < kListed; ++i) out << "\n  " << m.lines[i];
  if (m.lines.size() > kListed) out << "\n  ... and " << (m.lines.size() - kListed) << " more";
  throw ModelError(out.str());
}

}  // namespace

bool is_fp8_scale_key(const std::string& name) {
  auto ends = [&](const std::string& suffix) {
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends(".scale_weight") || ends(".scale_input");
}

float fp8_weight_scale(const TensorMap& weights, const std::string& weight_key) {
  const std::string key = weight_key.substr(0, weight_key.rfind('.')) + ".scale_weight";
  const auto it = weights.find(key);
  if (it == weights.end()) return 1.0f;
  const at::Tensor& t = it->second;
  FLUXBATCH_CHECK(t.numel() == 1 && at::isFloatingType(t.scalar_type()), ModelError,
                  key + ": a scale_weight must be one floating value, got shape " + shape_string(t.sizes()));
  const float scale = t.to(at::kFloat).item<float>();
  FLUXBATCH_CHECK(std::isfinite(scale) && scale > 0.0f, ModelError,
                  key + ": scale_weight " + std::to_string(scale) + " is not a positive finite number");
  return scale;
}

at::Tensor dense_weight(const TensorMap& weights, const std::string& key, c10::Device device, c10::ScalarType dtype) {
  const at::Tensor& stored = weights.at(key);
  if (!c10::isFloat8Type(stored.scalar_type())) return stored.to(device).to(dtype).contiguous();
  // Widened on the host (see load_state), scaled in float32, rounded once.
  const float scale = fp8_weight_scale(weights, key);
  at::Tensor wide = stored.to(at::kFloat);
  if (scale != 1.0f) wide.mul_(scale);
  return wide.to(device).to(dtype).contiguous();
}

void load_state(torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options) {
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) targets.emplace(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) targets.emplace(item.key(), item.value());

  Mismatch m;
  for (const auto& [name, target] : targets) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      m.lines.push_back("missing: " + name + " " + shape_string(target.sizes()));
      ++m.missing;
    } else if (it->second.sizes() != target.sizes()) {
      m.lines.push_back("shape mismatch: " + name + ": checkpoint " + shape_string(it->second.sizes()) + ", model " +
                        shape_string(target.sizes()));
      ++m.shape;
    }
  }
  for (const auto& [name, tensor] : weights) {
    // A scaled-fp8 weight's scales belong to the weight loaded under "<p>.weight".
    const bool scale_of_target = is_fp8_scale_key(name) && targets.count(name.substr(0, name.rfind('.')) + ".weight");
    if (targets.count(name) == 0 && !scale_of_target && !ignored(name, options.ignore_prefixes)) {
      m.lines.push_back("unexpected: " + name + " " + shape_string(tensor.sizes()));
      ++m.unexpected;
    }
  }
  if (!m.lines.empty()) throw_mismatch(m, options);

  c10::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    const c10::ScalarType stored = weights.at(name).scalar_type();
    const c10::ScalarType want = at::isFloatingType(stored) ? options.dtype : stored;
    // fp8 (Forge / ComfyUI T5 files) is widened on the host, one tensor at a time: copy_ and the device
    // kernels do not take every fp8 -> compute dtype pair, and the widening is exact for all of them.
    // A scaled-fp8 weight is multiplied by its scale_weight in float32 first.
    const at::Tensor source = !c10::isFloat8Type(stored) ? weights.at(name)
                              : fp8_weight_scale(weights, name) != 1.0f
                                  ? dense_weight(weights, name, c10::Device(c10::kCPU), want)
                                  : weights.at(name).to(want);
    if (target.defined() && !target.is_meta() && target.scalar_type() == want && target.device() == options.device) {
      target.copy_(source);  // the usual case: the module was allocated where it runs; no new memory
    } else {
      // set_data swaps the storage behind every handle to this tensor, so the module's members see it.
      target.set_data(convert(source, options));
    }
  }
}

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

}  // namespace fluxbatch::nn
