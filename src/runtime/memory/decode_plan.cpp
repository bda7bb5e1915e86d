#include "fluxbatch/runtime/memory/decode_plan.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <vector>

#include "fluxbatch/core/error.h"

namespace fluxbatch::runtime {
namespace {

constexpr int64_t kMinTile = 64, kMaxTile = 4096;
constexpr double kUntiledMargin = 1.2;  // convolution workspaces: 2.4 GiB at 1024² in bf16, as measured (H100)

// One convolution of the decoder with what the tiled decode runs around it (vae_exact_tiles.cpp).
struct ConvLayer {
  int64_t in_channels, out_channels;
  int64_t height, width;          // output resolution
  bool norm = false;              // GroupNorm + SiLU before
  bool upsample = false;          // nearest x2 before
  int64_t residual_channels = 0;  // the residual's map (0: none)
  bool shortcut = false;          // 1x1 conv on the residual
  bool last = false;              // conv_out: its output, the image, stays on the device
};
struct AttentionLayer {
  int64_t channels, height, width;
};

// Calls `conv` / `attention` for the decoder's layers in order (DecoderImpl::forward), at a
// latent size of h x w.
void walk(const models::vae::VaeConfig& c, int64_t h, int64_t w, const std::function<void(const ConvLayer&)>& conv,
          const std::function<void(const AttentionLayer&)>& attention) {
  const auto& ch = c.block_out_channels;
  const int64_t top = ch.back();
  conv({c.latent_channels, top, h, w});
  const auto resnet = [&](int64_t in, int64_t out) {
    conv({in, out, h, w, true});
    conv({out, out, h, w, true, false, in, in != out});
  };
  resnet(top, top);
  if (c.mid_block_add_attention) attention({top, h, w});
  resnet(top, top);
  int64_t previous = top;
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t out = ch[ch.size() - 1 - i];
    for (int64_t k = 0; k <= c.layers_per_block; ++k) {
      resnet(previous, out);
      previous = out;
    }
    if (i + 1 < ch.size()) {
      h *= 2;
      w *= 2;
      conv({out, out, h, w, false, true});
    }
  }
  conv({previous, c.out_channels, h, w, true, false, 0, false, true});
}

int64_t latent_edge(int pixels, const models::vae::VaeConfig& c) {
  FLUXBATCH_CHECK(pixels > 0, InputError, "VAE decode plan: image size must be positive");
  return std::max<int64_t>(1, pixels / c.scale_factor());
}

}  // namespace

VaeTiles parse_vae_tiles(const std::string& text, const std::string& what) {
  if (text == "auto") return {VaeTilesMode::kAuto, 0};
  if (text == "off") return {VaeTilesMode::kOff, 0};
  if (text == "on") return {VaeTilesMode::kOn, 0};
  std::string digits = text;
  if (digits.size() > 2 && digits.compare(digits.size() - 2, 2, "px") == 0) digits.resize(digits.size() - 2);
  const bool numeric = !digits.empty() && digits.size() <= 6 &&
                       std::all_of(digits.begin(), digits.end(), [](unsigned char ch) { return std::isdigit(ch); });
  const int64_t pixels = numeric ? std::stoll(digits) : 0;
  if (!numeric || pixels < kMinTile || pixels > kMaxTile || pixels % 8 != 0) {
    throw InputError(what + ": expected auto, off, on or a tile edge in pixels (a multiple of 8 from " +
                     std::to_string(kMinTile) + " to " + std::to_string(kMaxTile) + ", e.g. 256), got '" + text + "'");
  }
  return {VaeTilesMode::kOn, pixels};
}

std::string vae_tiles_text(const VaeTiles& tiles) {
  switch (tiles.mode) {
    case VaeTilesMode::kAuto: return "auto";
    case VaeTilesMode::kOff: return "off";
    case VaeTilesMode::kOn: return tiles.tile_pixels > 0 ? std::to_string(tiles.tile_pixels) : "on";
  }
  return "?";
}

int64_t untiled_decode_bytes(const models::vae::VaeConfig& c, int width, int height, int dtype_size) {
  const int64_t d = dtype_size;
  int64_t worst = 0;
  walk(
      c, latent_edge(height, c), latent_edge(width, c),
      [&](const ConvLayer& l) {
        // Live at the convolution: its input, norm and SiLU outputs (or the upsampled input), its
        // output, the residual; then the shortcut and the sum.
        const int64_t p = l.height * l.width;
        const int64_t in = l.in_channels * p / (l.upsample ? 4 : 1);
        int64_t live = in + l.out_channels * p + l.residual_channels * p;
        if (l.norm) live += 2 * l.in_channels * p;
        if (l.upsample) live += l.in_channels * p;
        if (l.residual_channels > 0) live += (l.shortcut ? 2 : 1) * l.out_channels * p;
        worst = std::max(worst, live * d);
      },
      [&](const AttentionLayer& a) {
        // x, normed, q, k, v, attention output, to_out, the sum (one head: no score matrix with the
        // memory-efficient kernels).
        worst = std::max(worst, 8 * a.channels * a.height * a.width * d);
      });
  return static_cast<int64_t>(static_cast<double>(worst) * kUntiledMargin);
}

int64_t tiled_decode_bytes(const models::vae::VaeConfig& c, int width, int height, int dtype_size,
                           const TiledDecodeSetup& setup) {
  FLUXBATCH_CHECK(setup.tile_pixels >= c.scale_factor() && setup.tile_pixels % c.scale_factor() == 0, InputError,
                  "VAE decode plan: tile edge " + std::to_string(setup.tile_pixels) + " is not a multiple of " +
                      std::to_string(c.scale_factor()));
  // The tiled decode computes in fp32 whatever the weights' dtype (ExactTileOptions::compute), each
  // layer's weights cast when they are narrower.
  const int64_t d = kTiledComputeBytes, h = latent_edge(height, c), w = latent_edge(width, c);
  const int64_t cast = dtype_size < kTiledComputeBytes ? kTiledComputeBytes : 0;  // bytes per cast weight
  const int64_t tile_latent = setup.tile_pixels / c.scale_factor();
  const bool maps_here = !setup.maps_on_host;
  int64_t worst = 0;
  walk(
      c, h, w,
      [&](const ConvLayer& l) {
        const int64_t edge = tile_latent * l.height / h;
        const int64_t th = std::min(edge, l.height), tw = std::min(edge, l.width);
        const int64_t t = th * tw, rp = (th + 2) * (tw + 2), p = l.height * l.width;
        // The fetched halo region, its fp32 norm temporaries, SiLU, padding; the output tile, the
        // residual tile and shortcut, the fp32 statistics temporaries (vae_exact_tiles.cpp's step). With
        // host maps a region arrives channels last and is made NCHW, and an output tile leaves channels
        // last: for a moment two copies of each, inside these counts.
        int64_t bytes = l.in_channels * rp * (2 * d + 8) + l.out_channels * t * (3 * d + 8);
        if (l.upsample) bytes += l.in_channels * rp * d / 4;
        const int64_t in_map = l.in_channels * p * d;  // no upsample comes with a norm
        if (l.norm && in_map <= setup.whole_norm_bytes) bytes += (maps_here ? 1 : 2) * in_map;  // (fetched,) normed
        if (l.residual_channels > 0) bytes += l.residual_channels * t * d;
        if (maps_here) bytes += (l.in_channels * p / (l.upsample ? 4 : 1) + l.residual_channels * p) * d;
        if (maps_here || l.last) bytes += l.out_channels * p * d;
        if (l.last) bytes += l.out_channels * p * dtype_size;  // the image in the weights' dtype
        bytes += cast * l.out_channels * (9 * l.in_channels + (l.shortcut ? l.residual_channels : 0));
        worst = std::max(worst, bytes);
      },
      [&](const AttentionLayer& a) {
        const int64_t tokens = a.height * a.width;
        const int64_t chunk = std::clamp<int64_t>(setup.attention_chunk_bytes / (12 * tokens), 1, tokens);
        // Normed tokens, keys and values of the whole latent; one query chunk's scores and rows.
        int64_t bytes = 3 * tokens * a.channels * d + 12 * chunk * tokens + chunk * a.channels * (4 * d + 8);
        if (maps_here) bytes += 2 * tokens * a.channels * d;
        if (tokens * a.channels * d <= setup.whole_norm_bytes) bytes += (maps_here ? 0 : 1) * tokens * a.channels * d;
        bytes += cast * 4 * a.channels * a.channels;  // q, k, v, out projections
        worst = std::max(worst, bytes);
      });
  return worst + kTiledDecodeFixedBytes;
}

std::string DecodePlan::describe() const {
  if (!tiled) return "whole image";
  return std::to_string(setup.tile_pixels) + " px tiles (exact, feature maps in " +
         (setup.maps_on_host ? "host" : "device") + " memory)";
}

DecodePlan plan_decode(const models::vae::VaeConfig& c, int width, int height, int dtype_size, bool host_maps,
                       int64_t resident_bytes, int64_t budget_bytes, const VaeTiles& tiles,
                       int64_t measured_whole_bytes) {
  const bool known = budget_bytes > 0;
  const auto finish = [&](DecodePlan plan) {
    plan.peak_bytes = resident_bytes + plan.activation_bytes;
    plan.fits = !known || plan.peak_bytes <= budget_bytes;
    return plan;
  };
  DecodePlan whole;
  whole.activation_bytes =
      measured_whole_bytes > 0 ? measured_whole_bytes : untiled_decode_bytes(c, width, height, dtype_size);
  whole = finish(whole);
  if (tiles.mode == VaeTilesMode::kOff || (tiles.mode == VaeTilesMode::kAuto && whole.fits)) return whole;

  std::vector<int64_t> edges;
  if (tiles.tile_pixels > 0) {
    edges.push_back(tiles.tile_pixels);
  } else {
    // From the smallest power of two covering the image (one tile per layer) down to 64 px.
    int64_t edge = kMinTile;
    while (edge < std::max(width, height) && edge < 2048) edge *= 2;
    for (; edge >= kMinTile; edge /= 2) edges.push_back(edge);
  }
  std::vector<bool> storages = {false};  // feature maps on the device first: no copies over the bus
  if (host_maps) storages.push_back(true);
  // The largest map at latent resolution and at twice it (whole_norm_bytes candidates).
  const int64_t latent_map =
      c.block_out_channels.back() * latent_edge(height, c) * latent_edge(width, c) * kTiledComputeBytes;
  const int64_t second_map = c.block_out_channels.size() > 1 ? 4 * latent_map : latent_map;
  DecodePlan last;
  for (const bool on_host : storages) {
    for (const int64_t whole_norm : {second_map, latent_map, int64_t{0}}) {
      for (const int64_t edge : edges) {
        for (const int64_t chunk : {int64_t{256} << 20, int64_t{64} << 20, int64_t{16} << 20}) {
          DecodePlan plan;
          plan.tiled = true;
          plan.setup = {edge, on_host, chunk, whole_norm};
          plan.activation_bytes = tiled_decode_bytes(c, width, height, dtype_size, plan.setup);
          last = finish(plan);
          if (last.fits) return last;
        }
      }
    }
  }
  return last;  // the smallest: does not fit
}

int64_t decode_stage_weight_bytes(const MemoryModel& model) {
  for (const StageModel& stage : model.stages) {
    if (stage.name == "decode") return model.weight_bytes(stage.resident);
  }
  return 0;
}

int64_t calibrated_decode_bytes(const MemoryModel& model, int width, int height) {
  if (!model.calibrated) return 0;
  for (const StageModel& stage : model.stages) {
    // The decode's cost has no text-token term: the sequence length does not matter.
    if (stage.name == "decode") return stage.cost.bytes(width, height, 0, model.dtype_size, 1);
  }
  return 0;
}

void apply_decode_plan(MemoryModel& model, const DecodePlan& plan) {
  if (!plan.tiled && model.calibrated) return;
  for (StageModel& stage : model.stages) {
    if (stage.name == "decode") stage.cost = StageCost{0.0, 0.0, plan.activation_bytes};
  }
}

}  // namespace fluxbatch::runtime
