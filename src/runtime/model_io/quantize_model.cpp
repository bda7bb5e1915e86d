// quantize_model: dense diffusers folder -> bitsandbytes-NF4 diffusers folder, tensor by tensor.
#include "fluxbatch/runtime/model_io/quantize_model.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/runtime/model_io/model_files.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;

const std::string kWeightsFile = "diffusion_pytorch_model.safetensors";

// ---- the output file's layout ---------------------------------------------------------------------

// The Python safetensors package orders tensors by dtype (this rank, descending), then by name.
int dtype_rank(io::DType d) {
  switch (d) {
    case io::DType::kBool: return 0;
    case io::DType::kU8: return 1;
    case io::DType::kI8: return 2;
    case io::DType::kF8_E5M2: return 3;
    case io::DType::kF8_E4M3: return 4;
    case io::DType::kI16: return 5;
    case io::DType::kU16: return 6;
    case io::DType::kF16: return 7;
    case io::DType::kBF16: return 8;
    case io::DType::kI32: return 9;
    case io::DType::kU32: return 10;
    case io::DType::kF32: return 11;
    case io::DType::kF64: return 12;
    case io::DType::kI64: return 13;
    case io::DType::kU64: return 14;
  }
  return 0;
}

io::DType io_dtype(c10::ScalarType t, const std::string& name) {
  switch (t) {
    case c10::kByte: return io::DType::kU8;
    case c10::kChar: return io::DType::kI8;
    case c10::kShort: return io::DType::kI16;
    case c10::kInt: return io::DType::kI32;
    case c10::kLong: return io::DType::kI64;
    case c10::kBool: return io::DType::kBool;
    default: throw ModelError(name + ": dtype " + std::string(c10::toString(t)) + " cannot be carried over");
  }
}

struct Entry {
  std::string name;
  io::DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  uint64_t offset = 0;  // in the data section
};

// A Linear weight bnb quantizes: FLUX's transformer has no other 2-D weights.
bool is_linear_weight(const std::string& name, const at::Tensor& t) {
  return ends_with(name, ".weight") && t.dim() == 2 && at::isFloatingType(t.scalar_type());
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// bnb's tensors for one Linear weight, as Linear4bit._save_to_state_dict names them.
void add_linear_entries(const std::string& name, const std::vector<int64_t>& shape, bool double_quant,
                        size_t state_bytes, std::vector<Entry>& entries) {
  const int64_t n = numel_of(shape);
  const int64_t blocks = (n + quant::kNf4BlockSize - 1) / quant::kNf4BlockSize;
  const auto add = [&](const std::string& suffix, io::DType d, std::vector<int64_t> s) {
    entries.push_back({name + suffix, d, s, static_cast<uint64_t>(numel_of(s)) * io::dtype_size(d)});
  };
  add("", io::DType::kU8, {(n + 1) / 2, 1});
  add(".quant_map", io::DType::kF32, {16});
  if (double_quant) {
    add(".absmax", io::DType::kU8, {blocks});
    add(".nested_absmax", io::DType::kF32, {(blocks + quant::kNf4NestedBlockSize - 1) / quant::kNf4NestedBlockSize});
    add(".nested_quant_map", io::DType::kF32, {256});
  } else {
    add(".absmax", io::DType::kF32, {blocks});
  }
  add(".quant_state.bitsandbytes__nf4", io::DType::kU8, {static_cast<int64_t>(state_bytes)});
}

// Sorts as safetensors does, assigns offsets; returns the padded header.
std::string lay_out(std::vector<Entry>& entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (dtype_rank(a.dtype) != dtype_rank(b.dtype)) return dtype_rank(a.dtype) > dtype_rank(b.dtype);
    return a.name < b.name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};  // diffusers' save_pretrained metadata
  uint64_t offset = 0;
  for (Entry& e : entries) {
    e.offset = offset;
    header[e.name] = {{"dtype", io::dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.nbytes}}};
    offset += e.nbytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  return text;
}

// ---- writing --------------------------------------------------------------------------------------

class OutputFile {
 public:
  explicit OutputFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw OutputError(path + ": cannot create (" + std::strerror(errno) + ")");
  }
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write_at(uint64_t offset, const void* data, size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw OutputError(path_ + ": write failed (" + std::strerror(errno) + ")");
      p += w;
      offset += static_cast<uint64_t>(w);
      n -= static_cast<size_t>(w);
    }
  }
  void close() {
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
      fd_ = -1;
      throw OutputError(path_ + ": cannot flush (" + std::strerror(errno) + ")");
    }
    fd_ = -1;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

class TransformerWriter {
 public:
  TransformerWriter(const std::string& path, std::vector<Entry> entries, uint64_t data_offset)
      : file_(path), data_offset_(data_offset) {
    for (Entry& e : entries) index_.emplace(e.name, std::move(e));
  }
  void header(const std::string& padded) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((padded.size() >> (8 * i)) & 0xff);
    file_.write_at(0, len, 8);
    file_.write_at(8, padded.data(), padded.size());
  }
  // `t` must match the planned entry's byte count.
  void put(const std::string& name, const at::Tensor& t) {
    const at::Tensor c = t.to(at::kCPU).contiguous();
    put_bytes(name, c.data_ptr(), c.numel() * c.element_size());
  }
  void put_bytes(const std::string& name, const void* data, size_t n) {
    const Entry& e = index_.at(name);
    FLUXBATCH_CHECK(e.nbytes == n, ModelError, name + ": " + std::to_string(n) + " bytes, planned " + std::to_string(e.nbytes));
    file_.write_at(data_offset_ + e.offset, data, n);
    ++written_;
  }
  void finish() {
    FLUXBATCH_CHECK(written_ == index_.size(), ModelError, "quantize: not every tensor was written");
    file_.close();
  }

 private:
  OutputFile file_;
  uint64_t data_offset_;
  std::map<std::string, Entry> index_;
  size_t written_ = 0;
};

quant::Nf4Tensor quantize_weight(const at::Tensor& dense, const QuantizeOptions& options) {
  // From bf16, as diffusers does with torch_dtype=torch.bfloat16 before bnb quantizes.
  const at::Tensor w = dense.to(options.device).to(at::kBFloat16).contiguous();
  return quant::quantize_nf4(w, options.double_quant, options.like).to(c10::Device(c10::kCPU));
}

// Writes the NF4 transformer file; returns the number of Linears.
int64_t write_transformer(const nn::TensorMap& weights, const std::string& path, const QuantizeOptions& options) {
  // The quant_state JSON of a double-quantized weight holds its offset, and every length enters the
  // header: a first pass computes the offsets.
  std::map<std::string, float> offsets;
  if (options.double_quant) {
    for (const auto& [name, t] : weights) {
      if (is_linear_weight(name, t)) offsets[name] = quantize_weight(t, options).offset;
    }
  }
  const auto state_json = [&](const std::string& name, const at::Tensor& t) {
    quant::Nf4Tensor shape_only;
    shape_only.shape = t.sizes().vec();
    shape_only.dtype = c10::kBFloat16;
    if (options.double_quant) {
      shape_only.q8 = at::empty({0}, at::kByte);  // marks it nested for the JSON
      shape_only.offset = offsets.at(name);
    }
    return bnb_quant_state_json(shape_only);
  };
  std::vector<Entry> entries;
  int64_t linears = 0;
  for (const auto& [name, t] : weights) {
    if (is_linear_weight(name, t)) {
      add_linear_entries(name, t.sizes().vec(), options.double_quant, state_json(name, t).size(), entries);
      ++linears;
    } else {
      const io::DType d = at::isFloatingType(t.scalar_type()) ? io::DType::kBF16 : io_dtype(t.scalar_type(), name);
      entries.push_back({name, d, t.sizes().vec(), static_cast<uint64_t>(t.numel()) * io::dtype_size(d)});
    }
  }
  const std::string header = lay_out(entries);
  TransformerWriter out(path, entries, 8 + header.size());
  out.header(header);
  const at::Tensor quant_map = at::tensor(std::vector<float>(quant::kNf4Code.begin(), quant::kNf4Code.end()));
  int64_t done = 0;
  for (const auto& [name, t] : weights) {
    if (!is_linear_weight(name, t)) {
      out.put(name, at::isFloatingType(t.scalar_type()) ? t.to(at::kBFloat16) : t);
      continue;
    }
    const quant::Nf4Tensor q = quantize_weight(t, options);
    const std::string json = bnb_quant_state_json(q);
    FLUXBATCH_CHECK(!options.double_quant || json == state_json(name, t), ModelError,
                    name + ": the double-quant offset changed between passes");
    out.put(name, q.packed);
    out.put(name + ".quant_map", quant_map);
    if (q.is_nested()) {
      out.put(name + ".absmax", q.q8);
      out.put(name + ".nested_absmax", q.nested_absmax);
      out.put(name + ".nested_quant_map", q.nested_quant_map);
    } else {
      out.put(name + ".absmax", q.absmax);
    }
    out.put_bytes(name + ".quant_state.bitsandbytes__nf4", json.data(), json.size());
    if (++done % 50 == 0) log::debug("quantize: " + std::to_string(done) + " / " + std::to_string(linears) + " Linears");
  }
  out.finish();
  return linears;
}

// ---- the folder -----------------------------------------------------------------------------------

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FLUXBATCH_CHECK(in.good(), ModelError, path.string() + ": cannot read");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Hard-links (copies across file systems) `from` into `to`, following symlinks (a Hugging Face cache
// snapshot is made of them).
void link_or_copy(const fs::path& from, const fs::path& to, QuantizeReport& report) {
  const fs::path source = fs::canonical(from);
  if (fs::is_directory(source)) {
    fs::create_directory(to);
    for (const auto& entry : fs::directory_iterator(source)) link_or_copy(entry.path(), to / entry.path().filename(), report);
    return;
  }
  std::error_code ec;
  fs::create_hard_link(source, to, ec);
  if (!ec) {
    ++report.files_linked;
    return;
  }
  fs::copy_file(source, to, ec);
  if (ec) throw OutputError(to.string() + ": cannot copy " + source.string() + " (" + ec.message() + ")");
  ++report.files_copied;
}

}  // namespace

ModelFiles dense_diffusers_model(const std::string& in) {
  const ModelFiles model = locate_model(in);
  FLUXBATCH_CHECK(model.layout == ModelLayout::kDiffusers, ModelError,
                  in + ": a " + std::string(layout_name(model.layout)) +
                      " model; quantize reads diffusers folders only (convert single files to a diffusers folder "
                      "first, or load them with `render --quantize nf4`)");
  FLUXBATCH_CHECK(model.transformer.quantization.empty(), ModelError,
                  in + ": the transformer is already quantized (" + model.transformer.quantization + ")");
  FLUXBATCH_CHECK(model.transformer.dialect == models::KeyDialect::kDiffusers && !model.transformer.config_path.empty(),
                  ModelError, in + ": transformer/ must hold diffusers keys and a config.json");
  return model;
}

void check_quantize_output(const std::string& in, const fs::path& out, bool overwrite) {
  const fs::path a = fs::weakly_canonical(in), b = fs::weakly_canonical(out);
  const std::string as = a.string() + "/", bs = b.string() + "/";
  FLUXBATCH_CHECK(bs.compare(0, as.size(), as) != 0 && as.compare(0, bs.size(), bs) != 0, OutputError,
                  out.string() + ": must be outside " + in + " (and not contain it)");
  std::error_code ec;
  FLUXBATCH_CHECK(overwrite || !fs::exists(fs::symlink_status(out, ec)), OutputError,
                  out.string() + ": already exists; pass --overwrite to replace it");
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  FLUXBATCH_CHECK(fs::is_directory(parent), OutputError, parent.string() + ": no such directory");
}

namespace {

// Moves the finished folder into place: atomically when OUT is new; with overwrite the old OUT is
// moved aside first and removed once the new one is in place.
void publish(const fs::path& tmp, const fs::path& out, bool overwrite) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(out, ec))) {
    FLUXBATCH_CHECK(overwrite, OutputError, out.string() + ": appeared while quantizing; not replaced");
    const fs::path old = out.parent_path() / ("." + out.filename().string() + ".old-" + std::to_string(::getpid()));
    fs::rename(out, old);
    fs::rename(tmp, out);
    fs::remove_all(old, ec);
    return;
  }
  fs::rename(tmp, out);
}

}  // namespace

QuantizeReport quantize_model(const std::string& in, const std::string& out, const QuantizeOptions& options) {
  const ModelFiles model = dense_diffusers_model(in);
  fs::path out_path = fs::path(out);
  if (out_path.filename().empty()) out_path = out_path.parent_path();  // "dir/" -> "dir"
  check_quantize_output(in, out_path, options.overwrite);
  const fs::path parent = out_path.parent_path().empty() ? fs::path(".") : out_path.parent_path();
  const fs::path tmp = parent / ("." + out_path.filename().string() + ".partial-" + std::to_string(::getpid()));

  QuantizeReport report;
  const c10::InferenceMode inference;
  try {
    fs::remove_all(tmp);
    fs::create_directory(tmp);
    const fs::path transformer_dir = fs::path(model.transformer.config_path).parent_path();
    for (const auto& entry : fs::directory_iterator(model.root)) {
      if (fs::equivalent(entry.path(), transformer_dir)) continue;
      link_or_copy(entry.path(), tmp / entry.path().filename(), report);
    }
    fs::create_directory(tmp / "transformer");
    const std::string config = bnb_nf4_config_json(read_text(model.transformer.config_path),
                                                   (fs::path(in) / "transformer").string(), options.double_quant);
    {
      std::ofstream file(tmp / "transformer" / "config.json", std::ios::binary);
      file << config;
      file.flush();
      FLUXBATCH_CHECK(file.good(), OutputError, (tmp / "transformer" / "config.json").string() + ": write failed");
    }
    for (const auto& f : weight_files(model.transformer)) report.transformer_bytes_in += fs::file_size(f);
    const nn::TensorMap weights = read_component(model.transformer, /*rename=*/false);
    for (const auto& [name, t] : weights) {
      FLUXBATCH_CHECK(!at::isFloat8Type(t.scalar_type()), ModelError,
                      in + ": " + name + " is float8; quantize a bf16 / fp16 / fp32 transformer");
    }
    const fs::path weights_path = tmp / "transformer" / kWeightsFile;
    report.linears = write_transformer(weights, weights_path.string(), options);
    report.transformer_bytes_out = fs::file_size(weights_path);
    publish(tmp, out_path, options.overwrite);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw OutputError(out + ": " + e.what());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return report;
}

}  // namespace fluxbatch::runtime
