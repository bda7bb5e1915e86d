// libFuzzer target over the bitsandbytes quant state parser (io::parse_bnb_quant_state), followed by
// the size arithmetic nn::read_bnb_nf4 does with its result: every input either gives a state whose
// sizes are computable without overflow, or fails with a ModelError naming the key. Any other
// exception, a crash, a sanitizer report (signed overflow, float cast) or a hang is a bug.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/bnb_quant_state.h"

using namespace fluxbatch;

namespace {

const std::string kKey = "double_blocks.0.img_attn.qkv.weight.quant_state.bitsandbytes__nf4";

void require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const io::BnbQuantState q = io::parse_bnb_quant_state(text, kKey);
    require(q.shape.size() == 2 && q.shape[0] > 0 && q.shape[1] > 0);
    require(q.dtype == "bfloat16" || q.dtype == "float16" || q.dtype == "float32");
    require(q.blocksize == io::kBnbBlockSize);
    // What read_bnb_nf4 computes from it (signed arithmetic: UBSan reports any overflow).
    const int64_t numel = q.shape[0] * q.shape[1];
    require(numel == q.numel() && numel > 0 && numel <= io::kBnbMaxValues);
    const int64_t packed = (numel + 1) / 2;
    const int64_t blocks = (numel + q.blocksize - 1) / q.blocksize;
    require(packed > 0 && blocks > 0);
    if (q.nested) {
      require(q.nested_blocksize == io::kBnbNestedBlockSize && std::isfinite(q.nested_offset));
      require((blocks + q.nested_blocksize - 1) / q.nested_blocksize > 0);
    }
  } catch (const ModelError& e) {
    require(std::string(e.what()).rfind(kKey + ": ", 0) == 0);
  }
  return 0;
}
