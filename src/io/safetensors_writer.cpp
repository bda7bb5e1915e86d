#include "fluxbatch/io/safetensors_writer.h"

#include "fluxbatch/core/error.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <cerrno>

namespace fluxbatch::io {
namespace {

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

}  // namespace

void SafetensorsWriter::check_new(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                  size_t nbytes) const {
  if (name == "__metadata__") throw ModelError("safetensors writer: '__metadata__' is not a tensor name");
  for (const auto& e : entries_) {
    if (e.name == name) throw ModelError("safetensors writer: tensor '" + name + "' added twice");
  }
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ModelError("safetensors writer: tensor '" + name + "' has a negative dimension");
    numel *= static_cast<uint64_t>(d);
  }
  if (numel * dtype_size(dtype) != nbytes) {
    throw ModelError("safetensors writer: tensor '" + name + "' shape needs " + std::to_string(numel * dtype_size(dtype)) +
                     " bytes, got " + std::to_string(nbytes));
  }
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                            size_t nbytes) {
  check_new(name, dtype, shape, nbytes);
  const auto* bytes = static_cast<const uint8_t*>(data);
  owned_.emplace_back(bytes, bytes + nbytes);
  entries_.push_back({name, dtype, shape, nullptr, nbytes, owned_.size() - 1});
}

void SafetensorsWriter::add_view(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                 const void* data, size_t nbytes) {
  check_new(name, dtype, shape, nbytes);
  entries_.push_back({name, dtype, shape, static_cast<const uint8_t*>(data), nbytes});
}

std::string SafetensorsWriter::header_json() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.nbytes}}};
    offset += e.nbytes;
  }
  return header.dump();
}

std::string SafetensorsWriter::padded_header() const {
  std::string header = header_json();
  // Pad so the data section starts at a multiple of 8, as the Python package does.
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');
  return header;
}

std::string SafetensorsWriter::serialize() const {
  const std::string header = padded_header();
  std::string out = le64(header.size()) + header;
  for (const auto& e : entries_) {
    const uint8_t* data = e.owned != SIZE_MAX ? owned_[e.owned].data() : e.data;
    out.append(reinterpret_cast<const char*>(data), e.nbytes);
  }
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw OutputError(path + ": cannot create (" + std::strerror(errno) + ")");
    const std::string header = padded_header();
    out << le64(header.size()) << header;
    for (const auto& e : entries_) {
      const uint8_t* data = e.owned != SIZE_MAX ? owned_[e.owned].data() : e.data;
      out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(e.nbytes));
    }
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw OutputError(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw OutputError(path + ": cannot rename " + tmp + " into place (" + std::strerror(errno) + ")");
  }
}

std::string raw_safetensors_bytes(const std::string& header, const std::string& data, int64_t header_length) {
  const uint64_t len = header_length == -1 ? header.size() : static_cast<uint64_t>(header_length);
  return le64(len) + header + data;
}

void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           int64_t header_length) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << raw_safetensors_bytes(header, data, header_length);
  if (!out) throw OutputError(path + ": write failed");
}

}  // namespace fluxbatch::io
