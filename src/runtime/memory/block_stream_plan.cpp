#include "fluxbatch/runtime/memory/block_stream_plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_budget.h"

namespace fluxbatch::runtime {
namespace {

// Parameters of a Linear with bias.
double linear(double in, double out) { return in * out + out; }

}  // namespace

int64_t TransformerSplit::total() const {
  return std::accumulate(block_bytes.begin(), block_bytes.end(), other_bytes);
}

TransformerSplit flux_transformer_split(const models::flux::FluxConfig& c, int64_t transformer_bytes) {
  const double d = static_cast<double>(c.inner_dim());
  const double head = static_cast<double>(c.attention_head_dim);
  const double mlp = 4.0 * d;  // FLUX's mlp_ratio
  // diffusers FluxTransformerBlock: two AdaLayerNormZero (6 d), q/k/v/out for each stream, RMSNorms
  // on q and k for each stream, two feed-forwards.
  const double double_block = 2 * linear(d, 6 * d) + 8 * linear(d, d) + 4 * head + 2 * (linear(d, mlp) + linear(mlp, d));
  // FluxSingleTransformerBlock: AdaLayerNormZeroSingle (3 d), proj_mlp, q/k/v, q/k norms, proj_out.
  const double single_block = linear(d, 3 * d) + linear(d, mlp) + 3 * linear(d, d) + 2 * head + linear(d + mlp, d);
  const double timestep = linear(256, d) + linear(d, d);
  const double other = linear(static_cast<double>(c.in_channels), d) +
                       linear(static_cast<double>(c.joint_attention_dim), d) + timestep +
                       (c.guidance_embeds ? timestep : 0.0) +
                       linear(static_cast<double>(c.pooled_projection_dim), d) + linear(d, d) + linear(d, 2 * d) +
                       linear(d, static_cast<double>(c.patch_size * c.patch_size * c.out_channels));
  const double total = other + static_cast<double>(c.num_layers) * double_block +
                       static_cast<double>(c.num_single_layers) * single_block;
  const double per_param = static_cast<double>(transformer_bytes) / total;
  TransformerSplit split;
  const auto bytes = [&](double params) { return static_cast<int64_t>(std::llround(params * per_param)); };
  for (int64_t i = 0; i < c.num_layers; ++i) split.block_bytes.push_back(bytes(double_block));
  for (int64_t i = 0; i < c.num_single_layers; ++i) split.block_bytes.push_back(bytes(single_block));
  // The rounding goes to the non-block part, so the parts add up to the transformer exactly.
  split.other_bytes = transformer_bytes - std::accumulate(split.block_bytes.begin(), split.block_bytes.end(), int64_t{0});
  return split;
}

TransformerSplit t5_encoder_split(const models::t5::T5Config& c, int64_t t5_bytes, int dtype_size) {
  TransformerSplit split;
  split.other_bytes = std::min(t5_bytes, (c.vocab_size + 1) * c.d_model * dtype_size);  // + the final norm
  const int64_t layers = std::max<int64_t>(c.num_layers, 1);
  const int64_t block = (t5_bytes - split.other_bytes) / layers;
  split.block_bytes.assign(static_cast<size_t>(c.num_layers), block);
  split.other_bytes = t5_bytes - block * c.num_layers;
  return split;
}

BlockStreamPlan plan_block_stream(const TransformerSplit& split, int64_t weight_room, int slots) {
  if (slots < 1) throw InputError("block streaming: need at least one slot, got " + std::to_string(slots));
  const int n = static_cast<int>(split.block_bytes.size());
  // The plan with the first r blocks resident.
  const auto with = [&](int r) {
    BlockStreamPlan p;
    p.blocks = n;
    p.resident_blocks = r;
    p.slots = r < n ? std::min(slots, n - r) : 0;
    int64_t resident = split.other_bytes;
    for (int b = 0; b < n; ++b) {
      const int64_t bytes = split.block_bytes[static_cast<size_t>(b)];
      if (b < r) {
        resident += bytes;
      } else {
        p.streamed_bytes += bytes;
        p.slot_bytes = std::max(p.slot_bytes, bytes);
      }
    }
    p.resident_bytes = resident + p.slots * p.slot_bytes;
    p.fits = p.resident_bytes <= weight_room;
    return p;
  };
  // Not monotonic in r (the last resident block may drop the ring), so try every r, most first.
  for (int r = n; r > 0; --r) {
    const BlockStreamPlan p = with(r);
    if (p.fits) return p;
  }
  return with(0);
}

std::vector<ComponentWeights> streamed_components(const std::vector<ComponentWeights>& components,
                                                  const BlockStreamPlan& plan, const std::string& component) {
  std::vector<ComponentWeights> out = components;
  for (ComponentWeights& c : out) {
    if (c.name == component) c.weight_bytes = plan.resident_bytes;
  }
  return out;
}

std::string describe_stream(const BlockStreamPlan& plan, const std::string& what) {
  return std::to_string(plan.resident_blocks) + " of " + std::to_string(plan.blocks) + " " + what +
         " blocks resident, " + std::to_string(plan.streamed_blocks()) + " streamed (" +
         format_bytes(plan.streamed_bytes) + " per " + (what == "T5" ? "prompt" : "step") + " over the bus)";
}

}  // namespace fluxbatch::runtime
