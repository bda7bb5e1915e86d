// From safetensors spans to module parameters. A TensorMap holds CPU tensors that are views of the
// memory-mapped files (no copy); load_state() copies them into a module, converting dtype/device.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace fluxbatch::io {
class SafetensorsFile;
}

namespace fluxbatch::nn {

// name -> CPU tensor (a view of a mapped file, kept alive by the tensor's deleter).
using TensorMap = std::map<std::string, at::Tensor>;

// Every tensor of the files (e.g. shards of one component). Duplicate names across files are an
// error. With `strip_prefix`, only names starting with it are taken, and it is removed. A path
// ending in ".index.json" stands for the shards it lists (and is checked against them).
TensorMap read_safetensors(const std::vector<std::string>& paths, const std::string& strip_prefix = "");

// The shard files a "<name>.safetensors.index.json" names (unique, in first-mention order, full
// paths); ModelError when the index is malformed or names a file outside its folder.
std::vector<std::string> shard_files(const std::string& index_path);

// Wraps one tensor of an open file as a CPU at::Tensor (zero-copy when aligned, else a copy).
at::Tensor to_tensor(const std::shared_ptr<io::SafetensorsFile>& file, const std::string& name);

// Writes tensors (any device; copied to CPU contiguous as needed) to a safetensors file through
// io::SafetensorsWriter. OutputError on I/O failure, ModelError for a dtype safetensors lacks.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct LoadOptions {
  c10::ScalarType dtype = c10::kFloat;  // floating tensors are converted to it; integer ones kept
  c10::Device device = c10::Device(c10::kCPU);
  std::vector<std::string> ignore_prefixes;  // checkpoint keys that are fine to leave unused
  std::string what;                          // e.g. "transformer (models/x/transformer)", for errors
  // Where quantize-on-load runs (nn::load_state_quantizing_nf4 and the like); unset: `device`. A GPU
  // quantizes a tensor in microseconds where the CPU reference takes seconds, so a model whose home is
  // the host (offload) still quantizes on the GPU and moves the result home.
  std::optional<c10::Device> quantize_device;
};

// Copies `weights` into `module`'s parameters and buffers by name. Throws ModelError that names
// every missing key, unexpected key, or shape mismatch (first 10, then a count), before touching
// the module. Afterwards every tensor is on options.device, floating ones in options.dtype: a
// tensor already allocated that way (or a meta tensor replaced) is filled in place with copy_, any
// other one is replaced (set_data) by the converted checkpoint tensor.
void load_state(torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options);

// ComfyUI "scaled fp8" checkpoints store a Linear as "<p>.weight" (float8_e4m3fn) times a per-tensor
// "<p>.scale_weight" (one fp32 value), sometimes with a "<p>.scale_input" (a static activation scale for fp8
// matmuls, which fluxbatch does not need: it scales activations per token). load_state accepts both beside a
// weight it loads and dequantizes such weights itself, one tensor at a time (w * s in float32, then one
// rounding to the load dtype), so no converted copy of the model is ever held.
bool is_fp8_scale_key(const std::string& name);  // "<p>.scale_weight" or "<p>.scale_input"
// The scale of `weight_key` ("<p>.weight"): "<p>.scale_weight" if present (ModelError naming the key unless
// it is one positive finite floating value), else 1.
float fp8_weight_scale(const TensorMap& weights, const std::string& weight_key);
// weights[key] as a dense `dtype` tensor on `device`: fp8 times its scale (in float32), others converted.
at::Tensor dense_weight(const TensorMap& weights, const std::string& key, c10::Device device, c10::ScalarType dtype);

// "[3072, 64]": a shape as error messages print it.
std::string shape_string(at::IntArrayRef shape);

}  // namespace fluxbatch::nn
