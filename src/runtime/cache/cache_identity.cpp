#include "fluxbatch/runtime/cache/cache_identity.h"

#ifdef FLUXBATCH_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/sha256.h"
#include "fluxbatch/runtime/device.h"

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kHead = int64_t{1} << 20;
constexpr int64_t kBlock = int64_t{64} << 10;
constexpr int kBlocks = 16;

std::string component_identity(const ComponentFiles& c) {
  std::string out = std::string(models::component_name(c.component)) + " [" + c.prefix + "]";
  for (const std::string& f : weight_files(c)) out += " " + file_fingerprint(f);
  if (!c.config_path.empty()) out += " config " + file_fingerprint(c.config_path);
  return out;
}

// Every file of a tokenizer folder, by name (the folder may move).
std::string folder_identity(const std::string& dir) {
  if (dir.empty()) return "none";
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  std::string out;
  for (const fs::path& f : files) out += " " + f.filename().string() + ":" + file_fingerprint(f.string());
  return out;
}

}  // namespace

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  if (!in || ec) throw ModelError("cannot read " + path + " to fingerprint it for the cache");
  Sha256 h;
  h.update(std::to_string(size) + "\n");
  std::string buffer;
  const auto take = [&](int64_t at, int64_t n) {
    buffer.resize(static_cast<size_t>(n));
    in.seekg(at);
    in.read(buffer.data(), n);
    h.update(buffer.data(), static_cast<size_t>(in.gcount()));
    in.clear();
  };
  if (size <= kHead + kBlock * kBlocks) {
    take(0, size);
  } else {
    take(0, kHead);
    const int64_t span = size - kHead - kBlock;
    for (int i = 0; i <= kBlocks; ++i) take(kHead + span * i / kBlocks, kBlock);  // the last block ends the file
  }
  const auto d = h.digest();
  return to_hex(d.data(), d.size());
}

std::string compute_identity(c10::Device device, c10::ScalarType dtype, bool quantize_nf4, const std::string& mode) {
  std::string out = device.is_cuda() ? "cuda" : "cpu";
#ifdef FLUXBATCH_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) == cudaSuccess) {
      out += std::string(" (") + prop.name + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
    }
  }
#endif
  return out + ", " + dtype_name(dtype) + (quantize_nf4 ? ", quantize nf4" : "") + (mode.empty() ? "" : ", " + mode);
}

std::string text_encoders_identity(const ModelFiles& model) {
  return std::string("fluxbatch " FLUXBATCH_VERSION) + "\n" + component_identity(model.text_encoder) + "\n" +
         component_identity(model.text_encoder_2) + "\ntokenizer" + folder_identity(model.tokenizer_dir) +
         "\ntokenizer_2" + folder_identity(model.tokenizer_2_dir);
}

std::string model_files_identity(const ModelFiles& model) {
  return text_encoders_identity(model) + "\n" + component_identity(model.transformer) + "\n" +
         component_identity(model.vae) + "\nscheduler " +
         (model.scheduler_config.empty() ? std::string("built-in ") + variant_name(model.variant)
                                         : file_fingerprint(model.scheduler_config));
}

}  // namespace fluxbatch::runtime
