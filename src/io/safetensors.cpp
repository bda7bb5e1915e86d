#include "fluxbatch/io/safetensors.h"

#include "fluxbatch/core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fluxbatch::io {
namespace {

using nlohmann::json;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8},         {DType::kF32, "F32", 4},         {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},       {DType::kF8_E4M3, "F8_E4M3", 1}, {DType::kF8_E5M2, "F8_E5M2", 1},
    {DType::kI64, "I64", 8},         {DType::kI32, "I32", 4},         {DType::kI16, "I16", 2},
    {DType::kI8, "I8", 1},           {DType::kU8, "U8", 1},           {DType::kBool, "BOOL", 1},
    {DType::kU16, "U16", 2},         {DType::kU32, "U32", 4},         {DType::kU64, "U64", 8},
};

const DTypeInfo& info(DType dtype) {
  for (const auto& entry : kDTypes) {
    if (entry.dtype == dtype) return entry;
  }
  throw ModelError("safetensors: invalid dtype enum value " + std::to_string(static_cast<int>(dtype)));
}

// a * b without wrapping; false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > UINT64_MAX / a) return false;
  *out = a * b;
  return true;
}

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

class HeaderParser {
 public:
  HeaderParser(std::string origin, uint64_t data_size) : origin_(std::move(origin)), data_size_(data_size) {}

  [[noreturn]] void fail(const std::string& message) const { throw ModelError(origin_ + ": " + message); }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& message) const {
    fail("tensor '" + name + "': " + message);
  }

  void parse_metadata(const json& value, SafetensorsHeader* header) const {
    if (!value.is_object()) fail("__metadata__ is not an object of strings (got " + describe(value) + ")");
    for (const auto& [key, entry] : value.items()) {
      if (!entry.is_string()) fail("__metadata__ entry '" + key + "' is not a string (got " + describe(entry) + ")");
      header->metadata[key] = entry.get<std::string>();
    }
  }

  TensorEntry parse_tensor(const std::string& name, const json& value) const {
    // No checkpoint names a tensor with control characters; a NUL would also cut every message short.
    for (unsigned char c : name) {
      if (c < 0x20) fail("tensor name " + json(name).dump() + " holds a control character");
    }
    if (!value.is_object()) fail_tensor(name, "entry is not an object (got " + describe(value) + ")");
    TensorEntry entry;
    entry.name = name;
    entry.dtype = parse_dtype_field(name, value);
    const uint64_t numel = parse_shape_field(name, value, &entry.shape);
    parse_offsets_field(name, value, &entry);
    uint64_t nbytes = 0;
    if (!checked_mul(numel, dtype_size(entry.dtype), &nbytes)) fail_tensor(name, "shape x dtype size overflows");
    if (nbytes != entry.end - entry.begin) {
      fail_tensor(name, "shape " + describe(value["shape"]) + " x " + dtype_name(entry.dtype) + " is " +
                            std::to_string(nbytes) + " bytes but data_offsets span " +
                            std::to_string(entry.end - entry.begin) + " bytes");
    }
    return entry;
  }

  // Spans may leave gaps but must not share bytes.
  void check_overlaps(std::vector<TensorEntry>& tensors) const {
    std::vector<const TensorEntry*> by_offset;
    for (const auto& t : tensors) {
      if (t.end > t.begin) by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorEntry* a, const TensorEntry* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const TensorEntry& prev = *by_offset[i - 1];
      const TensorEntry& cur = *by_offset[i];
      if (cur.begin < prev.end) {
        fail_tensor(cur.name, "data_offsets [" + std::to_string(cur.begin) + ", " + std::to_string(cur.end) +
                                  "] overlap tensor '" + prev.name + "' [" + std::to_string(prev.begin) + ", " +
                                  std::to_string(prev.end) + "]");
      }
    }
  }

 private:
  DType parse_dtype_field(const std::string& name, const json& value) const {
    auto it = value.find("dtype");
    if (it == value.end()) fail_tensor(name, "missing field 'dtype'");
    if (!it->is_string()) fail_tensor(name, "field 'dtype' is not a string (got " + describe(*it) + ")");
    DType dtype;
    if (!parse_dtype(it->get<std::string>(), &dtype)) fail_tensor(name, "unknown dtype " + describe(*it));
    return dtype;
  }

  uint64_t parse_shape_field(const std::string& name, const json& value, std::vector<int64_t>* shape) const {
    auto it = value.find("shape");
    if (it == value.end()) fail_tensor(name, "missing field 'shape'");
    if (!it->is_array()) fail_tensor(name, "field 'shape' is not an array (got " + describe(*it) + ")");
    uint64_t numel = 1;
    for (const auto& dim : *it) {
      if (!dim.is_number_integer()) fail_tensor(name, "shape " + describe(*it) + " holds a non-integer");
      if (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0) {
        fail_tensor(name, "shape " + describe(*it) + " holds a negative dimension");
      }
      const uint64_t d = dim.get<uint64_t>();
      if (d > static_cast<uint64_t>(INT64_MAX) || !checked_mul(numel, d, &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX)) {
        fail_tensor(name, "shape " + describe(*it) + " overflows");
      }
      shape->push_back(static_cast<int64_t>(d));
    }
    return numel;
  }

  void parse_offsets_field(const std::string& name, const json& value, TensorEntry* entry) const {
    auto it = value.find("data_offsets");
    if (it == value.end()) fail_tensor(name, "missing field 'data_offsets'");
    if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number_unsigned() || !(*it)[1].is_number_unsigned()) {
      fail_tensor(name, "field 'data_offsets' is not two non-negative integers (got " + describe(*it) + ")");
    }
    entry->begin = (*it)[0].get<uint64_t>();
    entry->end = (*it)[1].get<uint64_t>();
    if (entry->begin > entry->end) {
      fail_tensor(name, "data_offsets begin " + std::to_string(entry->begin) + " > end " + std::to_string(entry->end));
    }
    if (entry->end > data_size_) {
      fail_tensor(name, "data_offsets [" + std::to_string(entry->begin) + ", " + std::to_string(entry->end) +
                            "] run past the end of the data section (" + std::to_string(data_size_) +
                            " bytes): truncated file? download it again");
    }
  }

  std::string origin_;
  uint64_t data_size_;
};

uint64_t read_le64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Validates the 8-byte length prefix; returns the header length.
uint64_t checked_header_length(const uint8_t* bytes, size_t size, uint64_t file_size, const std::string& origin) {
  if (file_size < 8 || size < 8) {
    throw ModelError(origin + ": not a safetensors file (" + std::to_string(file_size) +
                     " bytes, shorter than the 8-byte header length)");
  }
  const uint64_t header_len = read_le64(bytes);
  if (header_len > kMaxHeaderBytes) {
    throw ModelError(origin + ": header length " + std::to_string(header_len) + " is absurd (limit " +
                     std::to_string(kMaxHeaderBytes) + " bytes): not a safetensors file?");
  }
  if (header_len > file_size - 8) {
    throw ModelError(origin + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                     std::to_string(file_size) + " bytes): truncated file?");
  }
  return header_len;
}

}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }

const char* dtype_name(DType dtype) { return info(dtype).name; }

bool parse_dtype(const std::string& text, DType* out) {
  for (const auto& entry : kDTypes) {
    if (text == entry.name) {
      *out = entry.dtype;
      return true;
    }
  }
  return false;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           const std::string& origin) {
  const uint64_t header_len = checked_header_length(bytes, size, file_size, origin);
  if (header_len > size - 8) {
    throw ModelError(origin + ": only " + std::to_string(size) + " bytes given for a header of " +
                     std::to_string(header_len) + " bytes");
  }
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  json root;
  std::string duplicate;
  std::set<std::string> seen;
  // nlohmann keeps the last of duplicate keys silently; a duplicated tensor name is ambiguous.
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string() && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    root = json::parse(text, text + header_len, on_event);
  } catch (const json::exception& e) {
    throw ModelError(origin + ": header is not valid JSON (" + e.what() + ")");
  }
  if (!duplicate.empty()) throw ModelError(origin + ": tensor '" + duplicate + "' appears twice in the header");
  if (!root.is_object()) throw ModelError(origin + ": header is not a JSON object");

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  HeaderParser parser(origin, file_size - header.data_offset);
  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      parser.parse_metadata(value, &header);
    } else {
      header.tensors.push_back(parser.parse_tensor(name, value));
    }
  }
  // nlohmann objects iterate in key order already; keep the guarantee explicit.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  parser.check_overlaps(header.tensors);
  return header;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated against overflow when the header was parsed
  return n;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ModelError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ModelError(path + ": not a regular file");
  }
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    checked_header_length(nullptr, 0, size, path);  // throws
  }
  // Private writable pages: an in-place op on a zero-copy tensor gets a copy-on-write page instead
  // of a SIGSEGV, and the file itself is never modified. MAP_NORESERVE keeps a 24 GB checkpoint from
  // being charged against RAM + swap; under strict overcommit accounting fall back to read-only.
  void* mapping = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (mapping == MAP_FAILED && errno == ENOMEM) mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) throw ModelError(path + ": mmap failed (" + std::strerror(map_errno) + ")");
  file->mapping_ = mapping;
  file->mapping_size_ = size;

  const auto* base = static_cast<const uint8_t*>(mapping);
  SafetensorsHeader header = parse_safetensors_header(base, size, size, path);
  file->data_offset_ = header.data_offset;
  file->metadata_ = std::move(header.metadata);
  file->tensors_.reserve(header.tensors.size());
  for (auto& entry : header.tensors) {
    TensorView view;
    view.name = std::move(entry.name);
    view.dtype = entry.dtype;
    view.shape = std::move(entry.shape);
    view.data = base + header.data_offset + entry.begin;
    view.nbytes = static_cast<size_t>(entry.end - entry.begin);
    file->index_[view.name] = file->tensors_.size();
    file->tensors_.push_back(std::move(view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::at(const std::string& name) const {
  const TensorView* view = find(name);
  if (view == nullptr) throw ModelError(path_ + ": no tensor named '" + name + "'");
  return *view;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ModelError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ModelError(path + ": not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  std::vector<uint8_t> bytes(8, 0);
  auto read_exact = [&](uint8_t* dst, size_t n, off_t offset) {
    size_t done = 0;
    while (done < n) {
      const ssize_t got = ::pread(fd, dst + done, n - done, offset + static_cast<off_t>(done));
      if (got <= 0) return false;
      done += static_cast<size_t>(got);
    }
    return true;
  };
  if (file_size >= 8 && !read_exact(bytes.data(), 8, 0)) {
    ::close(fd);
    throw ModelError(path + ": read failed");
  }
  try {
    const uint64_t header_len = checked_header_length(bytes.data(), bytes.size(), file_size, path);
    bytes.resize(8 + header_len);
    if (!read_exact(bytes.data() + 8, header_len, 8)) throw ModelError(path + ": read failed");
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return parse_safetensors_header(bytes.data(), bytes.size(), file_size, path);
}

}  // namespace fluxbatch::io
