// VaeDecoderImpl::decode_exact_tiled: the decoder layer by layer over whole feature maps, each
// layer tile by tile (see ExactTileOptions). A "step" is one convolution with what surrounds it in
// the decoder (GroupNorm + SiLU before it, nearest x2 before it, the residual after it), run over the
// output's tiles; every step also gathers the GroupNorm statistics of its output, which the next
// step's norm needs before its first tile (small maps are normalised whole, see whole_norm_bytes).
// Everything runs in ExactTileOptions::compute (fp32 by default): the weights are cast per layer.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/nn/activations.h"
#include "fluxbatch/nn/attention.h"
#include "fluxbatch/nn/ieee_convolutions.h"
#include "models/vae/vae_blocks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

namespace fluxbatch::models::vae {
namespace {

// A parameter in the compute dtype (the same tensor when it already is); undefined stays undefined.
at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) { return t.defined() ? t.to(dtype) : t; }

// Per (sample, group) mean and sum of squared deviations of a feature map, merged tile by tile
// (Chan et al.'s pairwise update) in fp64 on the decode device: no host round trip per tile.
class GroupStats {
 public:
  explicit GroupStats(int64_t groups) : groups_(groups) {}

  void add(const at::Tensor& part) {  // part: [B, C, ...] of the map, in the map's dtype
    const at::Tensor x = part.to(at::kFloat).reshape({part.size(0), groups_, -1});  // [B, G, n]
    const auto n = static_cast<double>(x.size(2));
    if (n == 0) return;
    const at::Tensor mean = x.mean(-1, /*keepdim=*/true);           // [B, G, 1]
    const at::Tensor m2 = (x - mean).square_().sum(-1).to(at::kDouble);  // [B, G]
    const at::Tensor m = mean.squeeze(-1).to(at::kDouble);
    if (count_ == 0) {
      mean_ = m;
      m2_ = m2;
    } else {
      const double total = count_ + n;
      const at::Tensor delta = m - mean_;
      mean_ = mean_ + delta * (n / total);
      m2_ = m2_ + m2 + delta.square() * (count_ * n / total);
    }
    count_ += n;
  }

  // at::group_norm as y = x * scale + shift per channel, the form its kernels use (scale = rstd *
  // gamma, shift = beta - scale * mean, biased variance): [B, C, 1, 1] fp32 each.
  std::pair<at::Tensor, at::Tensor> affine(const layers::GroupNormImpl& norm) const {
    FLUXBATCH_CHECK(count_ > 0 && norm.groups() == groups_, ModelError, "exact tiled VAE decode: no statistics");
    const int64_t channels = norm.weight.size(0);
    const at::Tensor rstd = (m2_ / count_ + norm.eps()).rsqrt().to(at::kFloat);  // [B, G]
    const at::Tensor mean = mean_.to(at::kFloat);
    const int64_t per_group = channels / groups_;
    const at::Tensor scale = rstd.repeat_interleave(per_group, 1) * norm.weight.to(at::kFloat);  // [B, C]
    const at::Tensor shift = norm.bias.to(at::kFloat) - scale * mean.repeat_interleave(per_group, 1);
    return {scale.view({scale.size(0), channels, 1, 1}), shift.view({shift.size(0), channels, 1, 1})};
  }

 private:
  int64_t groups_;
  double count_ = 0;
  at::Tensor mean_, m2_;  // [B, G] fp64
};

// A whole feature map [B, C, H, W] between layers, with its GroupNorm statistics.
struct Map {
  at::Tensor data;
  GroupStats stats{1};
};

class TiledDecoder {
 public:
  TiledDecoder(DecoderImpl& decoder, const VaeConfig& config, const ExactTileOptions& options,
               const at::Tensor& latents)
      : decoder_(decoder),
        config_(config),
        options_(options),
        device_(latents.device()),
        dtype_(options.compute.value_or(latents.scalar_type())),
        latent_h_(latents.size(2)),
        tile_latent_(options.tile_pixels / config.scale_factor()) {
    host_maps_ = device_.is_cuda() && options.maps_on_host;
  }

  at::Tensor run(const at::Tensor& z) {  // z: [B, latent, h, w] on the device
    Map h = step(Map{z.to(dtype_), GroupStats(config_.norm_num_groups)}, decoder_.conv_in());
    UNetMidBlock2DImpl& mid = decoder_.mid_block();
    h = resnet(std::move(h), mid.resnet(0));
    if (AttentionImpl* attention = mid.attention()) h = attend(std::move(h), *attention);
    h = resnet(std::move(h), mid.resnet(1));
    for (UpDecoderBlock2D& block : decoder_.up_blocks()) {
      for (ResnetBlock2D& r : block->resnets()) h = resnet(std::move(h), *r);
      if (layers::Conv2dImpl* up = block->upsample_conv()) h = step(std::move(h), *up, nullptr, /*upsample=*/true);
    }
    Map out = step(std::move(h), decoder_.conv_out(), &decoder_.conv_norm_out(), false, nullptr, nullptr,
                   /*last=*/true);
    return out.data;  // [B, out, H, W] on the device
  }

 private:
  Map resnet(Map x, ResnetBlock2DImpl& r) {
    Map h = step(x, r.conv1(), &r.norm1());
    return step(std::move(h), r.conv2(), &r.norm2(), false, &x, r.conv_shortcut());
  }

  // Maps wait on the host (pageable; the tiles go through pinned staging) or on the device. The
  // last map, the image, is small and returned on the device.
  at::Tensor new_map(int64_t batch, int64_t channels, int64_t height, int64_t width, bool last) const {
    if (host_maps_ && !last) {
      // Channels last: a tile's rows are contiguous runs of width * C values.
      return at::empty({batch, channels, height, width}, at::TensorOptions().dtype(dtype_),
                       at::MemoryFormat::ChannelsLast);
    }
    return at::empty({batch, channels, height, width}, at::TensorOptions().dtype(dtype_).device(device_));
  }

  // A region of a map on the device, contiguous.
  at::Tensor fetch(const at::Tensor& map, int64_t y0, int64_t y1, int64_t x0, int64_t x1) const {
    const at::Tensor region = map.slice(2, y0, y1).slice(3, x0, x1);
    if (map.device() == device_) return region.contiguous();
    // A host map is channels last, so the region is whole runs of (x1 - x0) * C values per row: staged in
    // that layout (row copies, no transpose on the host), made NCHW on the device.
    at::Tensor staging = at::empty(region.sizes(), region.options().pinned_memory(true), at::MemoryFormat::ChannelsLast);
    staging.copy_(region);
    // The caching host allocator keeps `staging` until the copy has run, so no sync is needed.
    return staging.to(device_, /*non_blocking=*/true).contiguous();
  }

  // tile [B, C, h, w] (on the device, NCHW) into map's region at (y0, x0).
  void store(const at::Tensor& map, int64_t y0, int64_t x0, const at::Tensor& tile) const {
    const at::Tensor region = map.slice(2, y0, y0 + tile.size(2)).slice(3, x0, x0 + tile.size(3));
    if (map.device() == tile.device()) {
      region.copy_(tile);
      return;
    }
    // To the host map's channels-last layout on the device, one copy into pinned memory (synchronous:
    // the host reads it next), then row copies into the map: no transpose on the host.
    const at::Tensor nhwc = tile.contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor staging =
        at::empty(tile.sizes(), nhwc.options().device(at::kCPU).pinned_memory(true), at::MemoryFormat::ChannelsLast);
    staging.copy_(nhwc);
    region.copy_(staging);
  }

  // silu(norm(x)) with the map's global statistics, rounded to the dtype where at::group_norm's
  // output is: x: [B, C, h, w] -> [B, C, h, w]
  at::Tensor norm_silu(const at::Tensor& x, const std::pair<at::Tensor, at::Tensor>& affine) const {
    return nn::silu(x.to(at::kFloat).mul(affine.first).add_(affine.second).to(dtype_));
  }

  bool normalise_whole(const at::Tensor& map) const {
    return static_cast<int64_t>(map.numel()) * static_cast<int64_t>(map.element_size()) <= options_.whole_norm_bytes;
  }

  // One convolution over the output's tiles: out = conv(pad(up(silu(norm(in))))) [+ shortcut(res)].
  Map step(const Map& in, layers::Conv2dImpl& conv, layers::GroupNormImpl* norm = nullptr, bool upsample = false,
           const Map* residual = nullptr, layers::Conv2dImpl* shortcut = nullptr, bool last = false) {
    at::Tensor src = in.data;
    at::Tensor normed_whole;  // [B, C, H, W] on the device: at::group_norm of the whole map
    if (norm && normalise_whole(src)) {
      normed_whole = at::group_norm(fetch(src, 0, src.size(2), 0, src.size(3)), norm->groups(),
                                    in_dtype(norm->weight, dtype_), in_dtype(norm->bias, dtype_), norm->eps());
      src = normed_whole;
    }
    const int64_t batch = src.size(0), factor = upsample ? 2 : 1;
    const int64_t height = src.size(2) * factor, width = src.size(3) * factor;
    const int64_t pad = conv.padding();
    const int64_t tile = std::max<int64_t>(1, tile_latent_ * height / latent_h_);  // this resolution's tile edge
    std::pair<at::Tensor, at::Tensor> affine;
    if (norm && !normed_whole.defined()) affine = in.stats.affine(*norm);
    const at::Tensor weight = in_dtype(conv.weight, dtype_), bias = in_dtype(conv.bias, dtype_);
    at::Tensor shortcut_weight, shortcut_bias;
    if (shortcut) {
      shortcut_weight = in_dtype(shortcut->weight, dtype_);
      shortcut_bias = in_dtype(shortcut->bias, dtype_);
    }
    Map out{new_map(batch, conv.weight.size(0), height, width, last), GroupStats(config_.norm_num_groups)};
    for (int64_t y0 = 0; y0 < height; y0 += tile) {
      const int64_t y1 = std::min(height, y0 + tile);
      for (int64_t x0 = 0; x0 < width; x0 += tile) {
        const int64_t x1 = std::min(width, x0 + tile);
        // The convolution input this tile needs, inside the image; zeros outside it (conv padding).
        const int64_t ry0 = std::max<int64_t>(0, y0 - pad), ry1 = std::min(height, y1 + pad);
        const int64_t rx0 = std::max<int64_t>(0, x0 - pad), rx1 = std::min(width, x1 + pad);
        at::Tensor x;
        if (upsample) {  // nearest x2: output row r is input row r / 2
          x = fetch(src, ry0 / 2, (ry1 - 1) / 2 + 1, rx0 / 2, (rx1 - 1) / 2 + 1);
          x = at::upsample_nearest2d(x, std::nullopt, std::vector<double>{2.0, 2.0});
          x = x.slice(2, ry0 % 2, ry0 % 2 + (ry1 - ry0)).slice(3, rx0 % 2, rx0 % 2 + (rx1 - rx0));
        } else {
          x = fetch(src, ry0, ry1, rx0, rx1);
        }
        if (normed_whole.defined()) {
          x = nn::silu(x);
        } else if (norm) {
          x = norm_silu(x, affine);
        }
        if (pad > 0) {
          x = at::constant_pad_nd(x, {rx0 - (x0 - pad), (x1 + pad) - rx1, ry0 - (y0 - pad), (y1 + pad) - ry1}, 0);
        }
        at::Tensor y = at::conv2d(x, weight, bias);  // [B, Cout, y1 - y0, x1 - x0]
        x = at::Tensor();
        if (residual) {
          at::Tensor r = fetch(residual->data, y0, y1, x0, x1);
          if (shortcut) r = at::conv2d(r, shortcut_weight, shortcut_bias);
          y = r + y;  // ResnetBlock2D: shortcut + h
        }
        if (!last) out.stats.add(y);
        store(out.data, y0, x0, y);
      }
    }
    return out;
  }

  // diffusers' mid-block Attention (AttnProcessor2_0, one head) over all h*w positions: the normed
  // tokens, keys and values of the whole latent on the device, the queries in chunks (each query's
  // softmax over all keys is independent of the others, so chunking changes no math).
  Map attend(const Map& in, AttentionImpl& attention) {
    const at::Tensor& src = in.data;
    const int64_t batch = src.size(0), channels = src.size(1), height = src.size(2), width = src.size(3);
    const int64_t tokens = height * width;
    const at::Tensor flat = src.view({batch, channels, tokens});  // [B, C, L] (also for channels last)
    const int64_t chunk = std::clamp<int64_t>(options_.attention_chunk_bytes / (12 * tokens), 1, tokens);
    // GroupNorm into [B, C, L]: whole, or a chunk at a time with the gathered statistics (its fp32
    // temporaries chunk-sized). The projections see [B, L, C] as the transposed view of it, as in
    // AttnProcessor2_0: a GEMM's rounding depends on its operands' layout.
    at::Tensor normed;
    layers::GroupNormImpl& norm = attention.group_norm();
    if (normalise_whole(src)) {
      normed = at::group_norm(fetch(src, 0, height, 0, width).view({batch, channels, tokens}), norm.groups(),
                              in_dtype(norm.weight, dtype_), in_dtype(norm.bias, dtype_), norm.eps());
    } else {
      const auto affine = in.stats.affine(norm);
      normed = at::empty({batch, channels, tokens}, at::TensorOptions().dtype(dtype_).device(device_));
      const int64_t rows = std::max<int64_t>(1, chunk / width);
      for (int64_t y0 = 0; y0 < height; y0 += rows) {
        const int64_t y1 = std::min(height, y0 + rows);
        const at::Tensor x = fetch(src, y0, y1, 0, width);
        const at::Tensor h = x.to(at::kFloat).mul(affine.first).add_(affine.second).to(dtype_);  // [B, C, r, W]
        normed.slice(2, y0 * width, y1 * width).copy_(h.view({batch, channels, -1}));
      }
    }
    const at::Tensor tokens_view = normed.transpose(1, 2);  // [B, L, C]
    auto one_head = [&](const at::Tensor& t) { return t.view({batch, -1, 1, channels}); };
    // The layer's own forward in its dtype (decode()'s rounding), else on weights cast to dtype_.
    const auto linear = [&](const nn::LinearImpl& layer, const at::Tensor& x) {
      if (layer.weight.scalar_type() == dtype_) return layer.forward(x);
      return at::linear(x, in_dtype(layer.weight, dtype_), in_dtype(layer.bias, dtype_));
    };
    const at::Tensor k = one_head(linear(attention.to_k(), tokens_view));  // [B, L, 1, C]
    const at::Tensor v = one_head(linear(attention.to_v(), tokens_view));
    Map out{new_map(batch, channels, height, width, false), GroupStats(config_.norm_num_groups)};
    const at::Tensor out_flat = out.data.view({batch, channels, tokens});
    for (int64_t s0 = 0; s0 < tokens; s0 += chunk) {
      const int64_t s1 = std::min(tokens, s0 + chunk);
      const at::Tensor q = one_head(linear(attention.to_q(), tokens_view.slice(1, s0, s1)));  // [B, n, 1, C]
      at::Tensor o = linear(attention.to_out(), nn::attention(q, k, v));                     // [B, n, C]
      at::Tensor x = flat.slice(2, s0, s1);
      x = x.device() == device_ ? x : x.to(device_);
      o = o.transpose(1, 2) + x;  // [B, C, n]; residual, rescale_output_factor 1
      out.stats.add(o);
      out_flat.slice(2, s0, s1).copy_(o);
    }
    return out;
  }

  DecoderImpl& decoder_;
  const VaeConfig& config_;
  ExactTileOptions options_;
  c10::Device device_;
  at::ScalarType dtype_;
  int64_t latent_h_;
  int64_t tile_latent_;
  bool host_maps_ = false;
};

}  // namespace

at::Tensor VaeDecoderImpl::decode_exact_tiled(const at::Tensor& latents, const ExactTileOptions& options) {
  FLUXBATCH_CHECK(latents.dim() == 4 && latents.size(1) == config_.latent_channels, InputError,
                  "VAE: latents must be [batch, " + std::to_string(config_.latent_channels) + ", h, w]");
  const int64_t scale = config_.scale_factor();
  FLUXBATCH_CHECK(options.tile_pixels >= scale && options.tile_pixels % scale == 0, InputError,
                  "VAE tiles: the tile edge must be a positive multiple of " + std::to_string(scale) +
                      " pixels, got " + std::to_string(options.tile_pixels));
  FLUXBATCH_CHECK(options.attention_chunk_bytes > 0, InputError, "VAE tiles: attention_chunk_bytes must be positive");
  const at::Tensor z = post_quant_conv_ ? post_quant_conv_->forward(latents) : latents;  // latent-sized
  const bool fp32_cuda = latents.is_cuda() && options.compute.value_or(latents.scalar_type()) == at::kFloat;
  const nn::IeeeConvolutions ieee(fp32_cuda);  // the tiles' shapes pick other cuDNN algorithms than decode()'s
  // [B, out, 8h, 8w], in the latents' dtype like decode()'s
  return TiledDecoder(*decoder_, config_, options, latents).run(z).to(latents.scalar_type());
}

}  // namespace fluxbatch::models::vae
