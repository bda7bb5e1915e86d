#include "fluxbatch/models/flux/transformer.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/models/flux/rope.h"

#include <ATen/ATen.h>

#include <sstream>

namespace fluxbatch::models::flux {
namespace {

std::string shape_of(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_shape(bool ok, const std::string& what, const std::string& expected, const at::Tensor& t) {
  FLUXBATCH_CHECK(ok, InputError,
                  "FluxTransformer2DModel.forward: " + what + " must be " + expected + ", got " + shape_of(t));
}

}  // namespace

FluxTransformer2DModelImpl::FluxTransformer2DModelImpl(const FluxConfig& config, const at::TensorOptions& options)
    : config_(config) {
  config_.validate("FluxTransformer2DModel config");
  const int64_t inner = config_.inner_dim();
  const int64_t heads = config_.num_attention_heads;
  const int64_t head_dim = config_.attention_head_dim;
  time_text_embed = register_module(
      "time_text_embed", TimeTextEmbed(inner, config_.pooled_projection_dim, config_.guidance_embeds, options));
  context_embedder = register_module("context_embedder", nn::Linear(config_.joint_attention_dim, inner, true, options));
  x_embedder = register_module("x_embedder", nn::Linear(config_.in_channels, inner, true, options));

  auto doubles = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    transformer_blocks.emplace_back(inner, heads, head_dim, options);
    doubles->push_back(transformer_blocks.back());
  }
  auto singles = register_module("single_transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_single_layers; ++i) {
    single_transformer_blocks.emplace_back(inner, heads, head_dim, options);
    singles->push_back(single_transformer_blocks.back());
  }
  norm_out = register_module("norm_out", AdaLayerNormContinuous(inner, inner, options));
  const int64_t out_features = config_.patch_size * config_.patch_size * config_.out_channels;
  proj_out = register_module("proj_out", nn::Linear(inner, out_features, true, options));
}

void FluxTransformer2DModelImpl::check_inputs(const at::Tensor& hidden_states, const at::Tensor& encoder_hidden_states,
                                              const at::Tensor& pooled_projections, const at::Tensor& timestep,
                                              const at::Tensor& img_ids, const at::Tensor& txt_ids,
                                              const at::Tensor& guidance) const {
  const auto& c = config_;
  check_shape(hidden_states.defined() && hidden_states.dim() == 3 && hidden_states.size(2) == c.in_channels,
              "hidden_states", "[B, S, " + std::to_string(c.in_channels) + "]", hidden_states);
  const int64_t batch = hidden_states.size(0);
  const int64_t image_len = hidden_states.size(1);
  const std::string b = std::to_string(batch);
  check_shape(encoder_hidden_states.defined() && encoder_hidden_states.dim() == 3 &&
                  encoder_hidden_states.size(0) == batch && encoder_hidden_states.size(2) == c.joint_attention_dim,
              "encoder_hidden_states", "[" + b + ", L, " + std::to_string(c.joint_attention_dim) + "]",
              encoder_hidden_states);
  const int64_t text_len = encoder_hidden_states.size(1);
  check_shape(pooled_projections.defined() && pooled_projections.dim() == 2 && pooled_projections.size(0) == batch &&
                  pooled_projections.size(1) == c.pooled_projection_dim,
              "pooled_projections", "[" + b + ", " + std::to_string(c.pooled_projection_dim) + "]",
              pooled_projections);
  check_shape(timestep.defined() && timestep.dim() == 1 && timestep.size(0) == batch, "timestep", "[" + b + "]",
              timestep);
  const std::string axes = std::to_string(c.axes_dims_rope.size());
  check_shape(img_ids.defined() && img_ids.dim() == 2 && img_ids.size(0) == image_len &&
                  img_ids.size(1) == static_cast<int64_t>(c.axes_dims_rope.size()),
              "img_ids", "[" + std::to_string(image_len) + ", " + axes + "]", img_ids);
  check_shape(txt_ids.defined() && txt_ids.dim() == 2 && txt_ids.size(0) == text_len &&
                  txt_ids.size(1) == static_cast<int64_t>(c.axes_dims_rope.size()),
              "txt_ids", "[" + std::to_string(text_len) + ", " + axes + "]", txt_ids);
  if (c.guidance_embeds) {
    check_shape(guidance.defined() && guidance.dim() == 1 && guidance.size(0) == batch, "guidance",
                "[" + b + "] (the model has guidance_embeds)", guidance);
  } else {
    FLUXBATCH_CHECK(!guidance.defined(), InputError,
                    "FluxTransformer2DModel.forward: guidance given, but the model has no guidance embedder "
                    "(guidance_embeds is false, as in FLUX.1-schnell)");
  }
}

at::Tensor FluxTransformer2DModelImpl::forward(const at::Tensor& hidden_states,
                                               const at::Tensor& encoder_hidden_states,
                                               const at::Tensor& pooled_projections, const at::Tensor& timestep,
                                               const at::Tensor& img_ids, const at::Tensor& txt_ids,
                                               const at::Tensor& guidance) const {
  check_inputs(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance);
  at::Tensor x = x_embedder->forward(hidden_states);  // [B, S, inner]
  trace("x_embedder", x);

  // The reference rounds timestep and guidance to the model dtype before scaling: in bf16 a guidance of
  // 3.5 becomes 3504 and sigma 0.98841 becomes 988, and the embedders see exactly those values.
  const auto dtype = x.scalar_type();
  const at::Tensor t = timestep.to(dtype) * 1000;
  const at::Tensor g = guidance.defined() ? guidance.to(dtype) * 1000 : at::Tensor();
  const at::Tensor temb = time_text_embed->forward(t, g, pooled_projections);  // [B, inner]
  trace("time_text_embed", temb);

  at::Tensor context = context_embedder->forward(encoder_hidden_states);  // [B, L, inner]
  trace("context_embedder", context);
  const nn::RopeTables rope = flux_pos_embed(at::cat({txt_ids, img_ids}, 0), config_.axes_dims_rope);
  // SiLU(temb) for every block's modulation, once (and its fp8 rows when the modulations compute in fp8).
  bool fp8_modulation = false;
  for (const DoubleBlock& b : transformer_blocks) fp8_modulation = fp8_modulation || b->norm1->linear->takes_fp8();
  for (const SingleBlock& b : single_transformer_blocks) fp8_modulation = fp8_modulation || b->norm->linear->takes_fp8();
  const Conditioning conditioning = Conditioning::of(temb, fp8_modulation);

  const auto doubles = static_cast<int64_t>(transformer_blocks.size());
  for (size_t i = 0; i < transformer_blocks.size(); ++i) {
    if (hook_.before) hook_.before(static_cast<int64_t>(i));
    StreamPair streams = transformer_blocks[i]->forward(x, context, conditioning, rope);
    if (hook_.after) hook_.after(static_cast<int64_t>(i));
    x = std::move(streams.x);
    context = std::move(streams.context);
    trace("transformer_blocks." + std::to_string(i), x);
    trace("transformer_blocks." + std::to_string(i) + ".context", context);
  }

  const int64_t text_len = context.size(1);
  at::Tensor h = at::cat({context, x}, 1);  // [B, L+S, inner], text first
  for (size_t i = 0; i < single_transformer_blocks.size(); ++i) {
    if (hook_.before) hook_.before(doubles + static_cast<int64_t>(i));
    h = single_transformer_blocks[i]->forward(h, conditioning, rope);
    if (hook_.after) hook_.after(doubles + static_cast<int64_t>(i));
    trace("single_transformer_blocks." + std::to_string(i), h);
  }

  x = norm_out->forward(h.slice(1, text_len), temb);
  trace("norm_out", x);
  return proj_out->forward(x);  // [B, S, patch^2 * out_channels]
}

std::vector<torch::nn::Module*> FluxTransformer2DModelImpl::blocks() {
  std::vector<torch::nn::Module*> out;
  for (const DoubleBlock& b : transformer_blocks) out.push_back(b.ptr().get());
  for (const SingleBlock& b : single_transformer_blocks) out.push_back(b.ptr().get());
  return out;
}

int FluxTransformer2DModelImpl::join_fp8_projections(bool with_mlp) {
  int joined = 0;
  for (SingleBlock& b : single_transformer_blocks) joined += b->join_fp8_projections(with_mlp) ? 1 : 0;
  return joined;
}

void FluxTransformer2DModelImpl::set_fp8_attention(bool on) {
  for (DoubleBlock& b : transformer_blocks) b->attn->set_fp8_attention(on);
  for (SingleBlock& b : single_transformer_blocks) b->attn->set_fp8_attention(on);
  fp8_attention_ = on;
}

bool computes_in_fp8(const std::string& name) {
  auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  return starts("transformer_blocks.") || starts("single_transformer_blocks.");
}

}  // namespace fluxbatch::models::flux
