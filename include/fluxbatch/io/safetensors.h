// Memory-mapped safetensors reader. Torch-free: it yields validated byte spans; nn/weights turns
// them into tensors. Every structural error (header past the file, offsets out of range or
// overlapping, shape x dtype != span, bad JSON) is a ModelError naming the file and tensor.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fluxbatch::io {

enum class DType { kF64, kF32, kF16, kBF16, kF8_E4M3, kF8_E5M2, kI64, kI32, kI16, kI8, kU8, kBool };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // as spelled in the file: "F32", "BF16", "F8_E4M3", ...

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; valid while the SafetensorsFile lives
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps the file read-only and validates the whole header.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }  // sorted by name
  const TensorView* find(const std::string& name) const;              // nullptr when absent
  const TensorView& at(const std::string& name) const;                // ModelError when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace fluxbatch::io
