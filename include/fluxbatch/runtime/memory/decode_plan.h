// The VAE decode's memory as a pure function: the device peak of the whole-image decode and of the
// exact tiled decode (models::vae::ExactTileOptions) from the VAE config, the image size, the tile
// size and the dtype, and the choice between them for a budget (--vae-tiles). No weights, no device.
#pragma once
#include <cstdint>
#include <string>

#include "fluxbatch/models/vae/config.h"
#include "fluxbatch/runtime/memory/memory_planner.h"

namespace fluxbatch::runtime {

// --vae-tiles: auto (whole-image decode when it fits the budget, else exact tiles), off (always
// whole), on (always exact tiles, the planner's tile size), or a tile edge in pixels (always tiles).
enum class VaeTilesMode { kAuto, kOff, kOn };
struct VaeTiles {
  VaeTilesMode mode = VaeTilesMode::kAuto;
  int64_t tile_pixels = 0;  // kOn: the user's tile edge; 0 = the planner's choice
};
// "auto", "off", "on" or a tile edge in pixels (a multiple of 8, 64 to 4096; "256", "256px").
// InputError naming `what` otherwise.
VaeTiles parse_vae_tiles(const std::string& text, const std::string& what = "--vae-tiles");
std::string vae_tiles_text(const VaeTiles& tiles);  // "auto", "off", "on", "256"

// How the exact tiled decode runs (mirrors models::vae::ExactTileOptions, which runtime fills).
struct TiledDecodeSetup {
  int64_t tile_pixels = 256;
  bool maps_on_host = true;  // whole feature maps wait in host memory (CUDA); false = on the device
  int64_t attention_chunk_bytes = int64_t{256} << 20;
  int64_t whole_norm_bytes = int64_t{64} << 20;  // maps normalised whole by at::group_norm (bit-exact)
};

// Activation bytes on the device (weights excluded) of one image's decode at width x height with
// dtype_size-byte activations: whole-image (the largest set of live tensors of any layer, with a
// margin for convolution workspaces: 2.4 GiB at 1024² in bf16 for the FLUX VAE, as measured on the
// H100) and exact tiled (one tile of the largest layer with its halo and temporaries, the mid-block
// attention's keys and values, the image, and the whole feature maps unless they wait on the host).
// The tiled decode's activations are fp32 (ExactTileOptions::compute's default) whatever dtype_size,
// the weights' and the image's dtype, is.
inline constexpr int64_t kTiledDecodeFixedBytes = int64_t{64} << 20;  // workspaces, allocator rounding
inline constexpr int64_t kTiledComputeBytes = 4;
int64_t untiled_decode_bytes(const models::vae::VaeConfig& config, int width, int height, int dtype_size);
int64_t tiled_decode_bytes(const models::vae::VaeConfig& config, int width, int height, int dtype_size,
                           const TiledDecodeSetup& setup);

struct DecodePlan {
  bool tiled = false;
  TiledDecodeSetup setup;        // when tiled
  int64_t activation_bytes = 0;  // predicted, weights excluded
  int64_t peak_bytes = 0;        // resident bytes + activation_bytes
  bool fits = true;              // peak_bytes <= budget (true when the budget is unknown)
  std::string describe() const;  // "whole image" or "256 px tiles (exact, feature maps in host memory)"
};

// The decode of one width x height image under `tiles`, with `resident_bytes` already on the device
// (weights) and `budget_bytes` in all (<= 0: unknown, so auto decodes whole). Tiled: the largest tile
// (2048 px down to 64) whose peak fits, feature maps on the device where that fits, else in host
// memory (only where `host_maps` is true: CUDA; on the CPU the device is the host, and the maps
// count against its budget); a smaller attention chunk before a smaller tile. When nothing fits,
// the smallest setup (fits false). A given tile edge is kept as given. Before a smaller tile, the
// feature maps normalised whole (bit-identical GroupNorm, which the bf16 mid-block needs most) shrink:
// those up to twice the latent resolution, then those at latent resolution, then none.
// `measured_whole_bytes` > 0: the whole decode's activations as calibration measured them
// (calibrated_decode_bytes), used instead of untiled_decode_bytes' prediction, so that the batch
// plan and this choice agree.
DecodePlan plan_decode(const models::vae::VaeConfig& config, int width, int height, int dtype_size, bool host_maps,
                       int64_t resident_bytes, int64_t budget_bytes, const VaeTiles& tiles,
                       int64_t measured_whole_bytes = 0);

// The resident weight bytes of the memory model's "decode" stage (0 without one).
int64_t decode_stage_weight_bytes(const MemoryModel& model);
// One width x height image's decode activations as a calibrated model measured them (its decode
// stage at batch 1); 0 when the model is not calibrated or has no decode stage.
int64_t calibrated_decode_bytes(const MemoryModel& model, int width, int height);
// The model's "decode" stage with `plan`'s activations, unless the model is calibrated and decodes
// whole (then its measured cost stays). Images decode one at a time, so the planned cost is fixed,
// not per image: the stage's batch-1 peak is then the plan's peak, whole or tiled.
void apply_decode_plan(MemoryModel& model, const DecodePlan& plan);

}  // namespace fluxbatch::runtime
