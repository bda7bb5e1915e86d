// Planning for block streaming (--offload stream, nn::BlockStreamer) as pure functions: how the
// transformer's bytes divide into its blocks, how many leading blocks stay resident for a given room,
// what the denoise stage then holds and what crosses the bus at each step. No weights, no device.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/runtime/memory/memory_planner.h"

namespace fluxbatch::runtime {

// The transformer's weights as streaming sees them: the non-block part (embedders, norm_out,
// proj_out), always resident in the denoise stage, and each block in the order the forward runs
// them (double blocks, then single blocks).
struct TransformerSplit {
  int64_t other_bytes = 0;
  std::vector<int64_t> block_bytes;
  int64_t total() const;
};

// A FLUX transformer of `config` whose weights take `transformer_bytes` (at any precision), divided in
// proportion to the parameters the config implies for each part (an NF4 or fp8 file shrinks every
// block alike; the non-block part is under 1% of FLUX.1).
TransformerSplit flux_transformer_split(const models::flux::FluxConfig& config, int64_t transformer_bytes);
// A T5 encoder of `config` whose weights take `t5_bytes`: the shared embedding (never quantized, at
// `dtype_size` bytes a value) is the non-block part, the rest divides equally into the blocks.
TransformerSplit t5_encoder_split(const models::t5::T5Config& config, int64_t t5_bytes, int dtype_size);
// What T5's streaming plan leaves free besides the encode stage's activation estimate: the estimate
// (linear in tokens) omits the attention scores, the NF4 dequantize scratch and allocator rounding.
// On the H100 a 512-token FLUX.1 encode took 0.25 GiB beyond its weights, 0.15 GiB past the estimate:
// without this room a 4 GiB budget planned 19 of 24 T5 blocks resident and ran out of memory.
inline constexpr int64_t kT5StreamHeadroomBytes = int64_t{256} << 20;

struct BlockStreamPlan {
  int blocks = 0;               // streamable blocks (FLUX.1: 19 double + 38 single = 57)
  int resident_blocks = 0;      // the leading ones kept on the device for the stage
  int slots = 0;                // device buffers of the ring (0: nothing streamed)
  int64_t slot_bytes = 0;       // one slot: the largest streamed block
  int64_t resident_bytes = 0;   // what the stage holds: non-block + resident blocks + slots
  int64_t streamed_bytes = 0;   // copied to the device per transformer call (per step)
  bool fits = true;             // false: even with no resident block the weights exceed the room
  int streamed_blocks() const { return blocks - resident_blocks; }
};

// The most leading blocks resident such that the non-block part, those blocks and a ring of `slots`
// buffers (each as large as the largest streamed block) take at most `weight_room` bytes. Leading
// blocks first: FLUX's double blocks come first and are the largest, so the most bytes stay put.
// Every block resident costs no ring. InputError for slots < 1.
BlockStreamPlan plan_block_stream(const TransformerSplit& split, int64_t weight_room, int slots = 2);

// `components` with `component`'s weight replaced by what its streaming stage holds, so
// flux_memory_model(..., Residency::kStream) and the batch planner see the streamed stage.
std::vector<ComponentWeights> streamed_components(const std::vector<ComponentWeights>& components,
                                                  const BlockStreamPlan& plan,
                                                  const std::string& component = "transformer");

// "38 of 57 transformer blocks resident, 19 streamed (1.90 GiB per step over the bus)" (`what` T5:
// "... T5 blocks ... per prompt ...").
std::string describe_stream(const BlockStreamPlan& plan, const std::string& what = "transformer");

}  // namespace fluxbatch::runtime
