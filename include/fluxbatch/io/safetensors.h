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

enum class DType { kF64, kF32, kF16, kBF16, kF8_E4M3, kF8_E5M2, kI64, kI32, kI16, kI8, kU8, kBool, kU16, kU32, kU64 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // as spelled in the file: "F32", "BF16", "F8_E4M3", ...
// "F32" -> kF32 ...; false when the spelling is not a safetensors dtype.
bool parse_dtype(const std::string& text, DType* out);

// Files larger than this header are refused: real headers are a few MB at most.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

// One tensor as the header describes it; offsets are relative to the data section.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;  // 8 + header length: where the data section starts in the file
  std::vector<TensorEntry> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a safetensors file. `bytes` holds the first `size` bytes of
// the file (all of it, or at least 8 + header length), `file_size` is the whole file's size.
// Never reads past `size`; every defect is a ModelError starting with "<origin>: ".
// Suitable as a libFuzzer entry point.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           const std::string& origin = "<memory>");

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
  uint64_t file_size() const { return mapping_size_; }
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Reads only the header of a file (no mapping of the data): names, dtypes, shapes, metadata.
// Cheap for inspection and layout detection of multi-GB files.
SafetensorsHeader read_safetensors_header(const std::string& path);

}  // namespace fluxbatch::io
