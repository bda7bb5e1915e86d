// libFuzzer target over the safetensors header parser (io::parse_safetensors_header): every input
// either parses into a header whose spans all lie inside the file and match shape x dtype, or fails
// with a ModelError. Any other exception, a crash, a sanitizer report or a hang is a bug. Each input
// is tried as a whole file and as the head of a much larger one (how read_safetensors_header calls it).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/safetensors.h"

using namespace fluxbatch;

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

void check(const io::SafetensorsHeader& h, size_t size, uint64_t file_size) {
  require(h.data_offset >= 8 && h.data_offset <= file_size);
  require(h.data_offset <= size);  // the parser read the whole header from the bytes it was given
  const uint64_t data_size = file_size - h.data_offset;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const io::TensorEntry& t = h.tensors[i];
    if (i > 0) require(h.tensors[i - 1].name < t.name);
    require(t.begin <= t.end && t.end <= data_size);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      require(d >= 0);
      numel *= static_cast<uint64_t>(d);
    }
    // The span is exactly shape x dtype (the product cannot have wrapped: the parser checked).
    require(t.end - t.begin == numel * io::dtype_size(t.dtype));
  }
}

void run(const uint8_t* data, size_t size, uint64_t file_size) {
  try {
    check(io::parse_safetensors_header(data, size, file_size, "fuzz.safetensors"), size, file_size);
  } catch (const ModelError& e) {
    require(std::string(e.what()).rfind("fuzz.safetensors: ", 0) == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run(data, size, size);
  run(data, size, uint64_t(size) + (uint64_t{1} << 40));
  return 0;
}
