#include "models/vae/vae_blocks.h"

#include "fluxbatch/nn/activations.h"
#include "fluxbatch/nn/attention.h"

#include <torch/nn/modules/container/modulelist.h>

#include <vector>

namespace fluxbatch::models::vae {
namespace {
constexpr double kNormEps = 1e-6;  // every GroupNorm of the diffusers VAE decoder
}  // namespace

ResnetBlock2DImpl::ResnetBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t groups,
                                     const at::TensorOptions& options) {
  norm1_ = register_module("norm1", layers::GroupNorm(groups, in_channels, kNormEps, options));
  conv1_ = register_module("conv1", layers::Conv2d(in_channels, out_channels, 3, 1, options));
  norm2_ = register_module("norm2", layers::GroupNorm(groups, out_channels, kNormEps, options));
  conv2_ = register_module("conv2", layers::Conv2d(out_channels, out_channels, 3, 1, options));
  if (in_channels != out_channels) {
    conv_shortcut_ = register_module("conv_shortcut", layers::Conv2d(in_channels, out_channels, 1, 0, options));
  }
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv1_->forward(nn::silu(norm1_->forward(x)));  // [B, Cout, H, W]
  h = conv2_->forward(nn::silu(norm2_->forward(h)));
  at::Tensor shortcut = conv_shortcut_ ? conv_shortcut_->forward(x) : x;
  return shortcut + h;  // output_scale_factor 1: diffusers' division by 1.0 is exact, skipped
}

AttentionImpl::AttentionImpl(int64_t channels, int64_t groups, const at::TensorOptions& options) {
  group_norm_ = register_module("group_norm", layers::GroupNorm(groups, channels, kNormEps, options));
  to_q_ = register_module("to_q", nn::Linear(channels, channels, true, options));
  to_k_ = register_module("to_k", nn::Linear(channels, channels, true, options));
  to_v_ = register_module("to_v", nn::Linear(channels, channels, true, options));
  auto to_out = register_module("to_out", torch::nn::ModuleList());
  to_out_ = nn::Linear(channels, channels, true, options);
  to_out->push_back(to_out_);  // to_out.1 is a parameterless Dropout
}

at::Tensor AttentionImpl::forward(const at::Tensor& x) {
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  // The same views as AttnProcessor2_0, so every op sees the strides it sees in diffusers.
  at::Tensor h = x.view({batch, channels, height * width}).transpose(1, 2);  // [B, HW, C]
  h = group_norm_->forward(h.transpose(1, 2)).transpose(1, 2);
  auto one_head = [&](const at::Tensor& t) { return t.view({batch, -1, 1, channels}); };
  at::Tensor q = one_head(to_q_->forward(h));  // [B, HW, 1, C]
  at::Tensor k = one_head(to_k_->forward(h));
  at::Tensor v = one_head(to_v_->forward(h));
  at::Tensor out = to_out_->forward(nn::attention(q, k, v));  // [B, HW, C]
  out = out.transpose(-1, -2).reshape({batch, channels, height, width});
  return out + x;  // residual; rescale_output_factor 1
}

UNetMidBlock2DImpl::UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention,
                                       const at::TensorOptions& options) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  for (int i = 0; i < 2; ++i) {
    resnets_.push_back(ResnetBlock2D(channels, channels, groups, options));
    resnets->push_back(resnets_.back());
  }
  if (add_attention) {
    auto attentions = register_module("attentions", torch::nn::ModuleList());
    attention_ = Attention(channels, groups, options);
    attentions->push_back(attention_);
  }
}

at::Tensor UNetMidBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = resnets_[0]->forward(x);
  if (attention_) h = attention_->forward(h);
  return resnets_[1]->forward(h);
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                           int64_t groups, bool add_upsample, const at::TensorOptions& options) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i) {
    resnets_.push_back(ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, groups, options));
    resnets->push_back(resnets_.back());
  }
  if (add_upsample) {
    auto upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    auto upsampler = std::make_shared<torch::nn::Module>();  // Upsample2D: interpolate, then "conv"
    upsample_conv_ = upsampler->register_module("conv", layers::Conv2d(out_channels, out_channels, 3, 1, options));
    upsamplers->push_back(upsampler);
  }
}

at::Tensor UpDecoderBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = x;
  for (auto& resnet : resnets_) h = resnet->forward(h);
  if (!upsample_conv_) return h;
  // F.interpolate(scale_factor=2.0, mode="nearest") calls exactly this overload.
  h = at::upsample_nearest2d(h, std::nullopt, std::vector<double>{2.0, 2.0});
  return upsample_conv_->forward(h);
}

DecoderImpl::DecoderImpl(const VaeConfig& config, const at::TensorOptions& options) {
  const auto& channels = config.block_out_channels;
  const int64_t groups = config.norm_num_groups;
  conv_in_ = register_module("conv_in", layers::Conv2d(config.latent_channels, channels.back(), 3, 1, options));
  mid_block_ = register_module("mid_block",
                               UNetMidBlock2D(channels.back(), groups, config.mid_block_add_attention, options));
  auto up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  int64_t previous = channels.back();
  for (size_t i = 0; i < channels.size(); ++i) {
    const int64_t out = channels[channels.size() - 1 - i];
    const bool last = i + 1 == channels.size();
    up_blocks_.push_back(UpDecoderBlock2D(previous, out, config.layers_per_block + 1, groups, !last, options));
    up_blocks->push_back(up_blocks_.back());
    previous = out;
  }
  conv_norm_out_ = register_module("conv_norm_out", layers::GroupNorm(groups, channels.front(), kNormEps, options));
  conv_out_ = register_module("conv_out", layers::Conv2d(channels.front(), config.out_channels, 3, 1, options));
}

at::Tensor DecoderImpl::forward(const at::Tensor& z) {
  at::Tensor h = mid_block_->forward(conv_in_->forward(z));  // [B, C_last, h, w]
  for (auto& block : up_blocks_) h = block->forward(h);
  return conv_out_->forward(nn::silu(conv_norm_out_->forward(h)));  // [B, out, H, W]
}

}  // namespace fluxbatch::models::vae
