// Writes safetensors files: the layout the Python `safetensors` package produces (header padded
// with spaces so the data section starts 8-byte aligned, tensors laid out back to back).
// Used by `fluxbatch quantize` and by tests that craft hostile files with write_raw_safetensors.
#pragma once
#include "fluxbatch/io/safetensors.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fluxbatch::io {

class SafetensorsWriter {
 public:
  // Copies `nbytes` bytes; they must equal numel(shape) x dtype_size (else ModelError). Names are
  // unique and not "__metadata__".
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  // Same, without a copy: `data` must stay valid until write()/serialize() returns.
  void add_view(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                size_t nbytes);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  size_t size() const { return entries_.size(); }
  // The JSON header (unpadded) the file will carry.
  std::string header_json() const;
  // The whole file in memory (small files, tests).
  std::string serialize() const;
  // Writes to `path` through a temporary file renamed into place; OutputError on failure.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data;
    size_t nbytes;
    size_t owned = SIZE_MAX;  // index into owned_ when copied
  };
  void check_new(const std::string& name, DType dtype, const std::vector<int64_t>& shape, size_t nbytes) const;
  std::string padded_header() const;

  std::vector<Entry> entries_;
  std::vector<std::vector<uint8_t>> owned_;
  std::map<std::string, std::string> metadata_;
};

// Writes exactly: 8-byte little-endian `header_length` (-1: header.size(); other negatives wrap to
// huge unsigned values), `header`, `data`.
// No validation at all: for crafting broken files in tests and fuzz seeds.
std::string raw_safetensors_bytes(const std::string& header, const std::string& data, int64_t header_length = -1);
void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           int64_t header_length = -1);

}  // namespace fluxbatch::io
