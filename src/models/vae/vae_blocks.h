// Blocks of diffusers' VAE Decoder, named after diffusers' classes and attributes so registered
// names reproduce the checkpoint keys. Only what the AutoencoderKL decoder uses: no time embedding,
// output_scale_factor 1, GroupNorm eps 1e-6, SiLU.
#pragma once
#include "fluxbatch/models/vae/config.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/norms.h"
#include "models/t5/basic_layers.h"

#include <vector>

namespace fluxbatch::models::vae {

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  ResnetBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t groups, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, Cin, H, W] -> [B, Cout, H, W]

  // The layers, for the exact tiled decode (vae_exact_tiles.cpp), which runs them tile by tile.
  layers::GroupNormImpl& norm1() { return *norm1_; }
  layers::GroupNormImpl& norm2() { return *norm2_; }
  layers::Conv2dImpl& conv1() { return *conv1_; }
  layers::Conv2dImpl& conv2() { return *conv2_; }
  // Null when Cin == Cout (the shortcut is the identity).
  layers::Conv2dImpl* conv_shortcut() { return conv_shortcut_ ? conv_shortcut_.get() : nullptr; }

 private:
  layers::GroupNorm norm1_{nullptr}, norm2_{nullptr};
  layers::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv_shortcut_{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// diffusers Attention with AttnProcessor2_0 as the mid block builds it: GroupNorm, one head over
// all h*w positions, residual connection, rescale factor 1.
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t channels, int64_t groups, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, C, H, W] -> [B, C, H, W]

  layers::GroupNormImpl& group_norm() { return *group_norm_; }
  const nn::LinearImpl& to_q() const { return *to_q_; }
  const nn::LinearImpl& to_k() const { return *to_k_; }
  const nn::LinearImpl& to_v() const { return *to_v_; }
  const nn::LinearImpl& to_out() const { return *to_out_; }

 private:
  layers::GroupNorm group_norm_{nullptr};
  nn::Linear to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr}, to_out_{nullptr};
};
TORCH_MODULE(Attention);

class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, C, H, W] -> [B, C, H, W]

  ResnetBlock2DImpl& resnet(size_t i) { return *resnets_.at(i); }
  AttentionImpl* attention() { return attention_ ? attention_.get() : nullptr; }  // null: no mid_block_add_attention

 private:
  std::vector<ResnetBlock2D> resnets_;
  Attention attention_{nullptr};
};
TORCH_MODULE(UNetMidBlock2D);

class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups,
                       bool add_upsample, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // x: [B, Cin, H, W] -> [B, Cout, 2H, 2W] (H, W without upsampler)

  std::vector<ResnetBlock2D>& resnets() { return resnets_; }
  layers::Conv2dImpl* upsample_conv() { return upsample_conv_ ? upsample_conv_.get() : nullptr; }  // null: last block

 private:
  std::vector<ResnetBlock2D> resnets_;
  layers::Conv2d upsample_conv_{nullptr};  // "upsamplers.0.conv"
};
TORCH_MODULE(UpDecoderBlock2D);

class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const VaeConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& z);  // z: [B, latent, h, w] -> [B, out, h*2^(n-1), w*2^(n-1)]

  layers::Conv2dImpl& conv_in() { return *conv_in_; }
  UNetMidBlock2DImpl& mid_block() { return *mid_block_; }
  std::vector<UpDecoderBlock2D>& up_blocks() { return up_blocks_; }
  layers::GroupNormImpl& conv_norm_out() { return *conv_norm_out_; }
  layers::Conv2dImpl& conv_out() { return *conv_out_; }

 private:
  layers::Conv2d conv_in_{nullptr}, conv_out_{nullptr};
  UNetMidBlock2D mid_block_{nullptr};
  std::vector<UpDecoderBlock2D> up_blocks_;
  layers::GroupNorm conv_norm_out_{nullptr};
};

}  // namespace fluxbatch::models::vae
