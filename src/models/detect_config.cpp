// Hyper-parameters from tensor shapes, for checkpoints that ship without a config.json
// (BFL / ComfyUI / Forge single files). Torch-free; declared in checkpoint_keys.h.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/checkpoint_keys.h"

#include <algorithm>
#include <cstdint>

namespace fluxbatch::models {
namespace {

// Far above any FLUX.1 component (38 single blocks, 24 T5 layers), far below what would exhaust memory.
constexpr int64_t kMaxBlocks = 1024;

class Shapes {
 public:
  Shapes(const ShapeMap& shapes, std::string what) : shapes_(shapes), what_(std::move(what)) {}

  bool has(const std::string& key) const { return shapes_.count(key) != 0; }
  bool has_prefix(const std::string& prefix) const {
    auto it = shapes_.lower_bound(prefix);
    return it != shapes_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
  }
  // The first of `keys` present; ModelError naming them all when none is.
  const std::string& pick(std::initializer_list<const char*> keys) const {
    for (const char* k : keys) {
      auto it = shapes_.find(k);
      if (it != shapes_.end()) return it->first;
    }
    std::string names;
    for (const char* k : keys) names += std::string(names.empty() ? "" : " or ") + "'" + k + "'";
    throw ModelError(what_ + ": cannot detect the configuration: no tensor " + names);
  }
  int64_t dim(const std::string& key, size_t axis) const {
    const auto& shape = shapes_.at(key);
    if (axis >= shape.size()) {
      throw ModelError(what_ + ": tensor '" + key + "' has shape " + shape_text(shape) + ", expected at least " +
                       std::to_string(axis + 1) + " dimensions");
    }
    return shape[axis];
  }
  // Input features of a Linear weight with `out` rows, plain [out, in] or bnb-NF4 packed
  // [(out*in+1)/2, 1] uint8 (two 4-bit codes per byte).
  int64_t in_features(const std::string& key, int64_t out) const {
    const auto& shape = shapes_.at(key);
    if (shape.size() == 2 && shape[0] == out) return shape[1];
    // shape[0] * 2 must not overflow: a header can claim any dimension up to 2^63 - 1 (with another one 0).
    if (shape.size() == 2 && shape[1] == 1 && out > 0 && shape[0] <= INT64_MAX / 2 && (shape[0] * 2) % out == 0) {
      return shape[0] * 2 / out;
    }
    throw ModelError(what_ + ": tensor '" + key + "' has shape " + shape_text(shape) + ", expected [" +
                     std::to_string(out) + ", in] or a packed 4-bit weight");
  }
  // 1 + the largest N among keys "<head>N."; ModelError past kMaxBlocks (a block index no model has would
  // size the configuration's lists, and the model built from it, by that number).
  int64_t count(const std::string& head) const {
    int64_t n = 0;
    for (auto it = shapes_.lower_bound(head); it != shapes_.end() && it->first.compare(0, head.size(), head) == 0;
         ++it) {
      size_t pos = head.size();
      size_t end = pos;
      while (end < it->first.size() && std::isdigit(static_cast<unsigned char>(it->first[end]))) ++end;
      if (end > pos && end < it->first.size() && it->first[end] == '.' && end - pos < 10) {
        n = std::max<int64_t>(n, std::stoll(it->first.substr(pos, end - pos)) + 1);
        if (n > kMaxBlocks) {
          throw ModelError(what_ + ": tensor '" + it->first + "' numbers block " + std::to_string(n - 1) +
                           ", more than any FLUX component has (a corrupt or hostile file?)");
        }
      }
    }
    return n;
  }

 private:
  const ShapeMap& shapes_;
  std::string what_;
};

int64_t heads(int64_t inner, int64_t head_dim) {
  if (head_dim <= 0 || inner % head_dim != 0) {
    throw ModelError("FLUX transformer: inner dim " + std::to_string(inner) + " is not a multiple of the head dim " +
                     std::to_string(head_dim));
  }
  return inner / head_dim;
}

template <typename Config>
Config validated(Config config, const std::string& what) {
  config.validate(what + " (configuration detected from tensor shapes)");
  return config;
}

}  // namespace

flux::FluxConfig detect_flux_config(const ShapeMap& shapes) {
  const Shapes s(shapes, "FLUX transformer");
  const bool bfl = s.has_prefix("double_blocks.") || s.has("img_in.weight");
  flux::FluxConfig c;
  if (bfl) {
    c.attention_head_dim = s.dim(s.pick({"double_blocks.0.img_attn.norm.query_norm.scale"}), 0);
    const int64_t inner = s.dim(s.pick({"img_in.bias"}), 0);
    c.num_attention_heads = heads(inner, c.attention_head_dim);
    c.in_channels = s.in_features(s.pick({"img_in.weight"}), inner);
    c.out_channels = s.dim(s.pick({"final_layer.linear.bias"}), 0);
    c.joint_attention_dim = s.in_features(s.pick({"txt_in.weight"}), inner);
    c.pooled_projection_dim = s.in_features(s.pick({"vector_in.in_layer.weight"}), inner);
    c.num_layers = s.count("double_blocks.");
    c.num_single_layers = s.count("single_blocks.");
    c.guidance_embeds = s.has_prefix("guidance_in.");
  } else {
    c.attention_head_dim = s.dim(s.pick({"transformer_blocks.0.attn.norm_q.weight"}), 0);
    const int64_t inner = s.dim(s.pick({"x_embedder.bias"}), 0);
    c.num_attention_heads = heads(inner, c.attention_head_dim);
    c.in_channels = s.in_features(s.pick({"x_embedder.weight"}), inner);
    c.out_channels = s.dim(s.pick({"proj_out.bias"}), 0);
    c.joint_attention_dim = s.in_features(s.pick({"context_embedder.weight"}), inner);
    c.pooled_projection_dim = s.in_features(s.pick({"time_text_embed.text_embedder.linear_1.weight"}), inner);
    c.num_layers = s.count("transformer_blocks.");
    c.num_single_layers = s.count("single_transformer_blocks.");
    c.guidance_embeds = s.has_prefix("time_text_embed.guidance_embedder.");
  }
  c.patch_size = 1;
  // RoPE axes are not in the weights: BFL's split of 128 is [16, 56, 56]; the same rule (first axis
  // ~1/8 rounded up to a multiple of 4, the rest halved) gives [4, 6, 6] for 16.
  const int64_t d = c.attention_head_dim;
  const int64_t first = ((d / 8 + 3) / 4) * 4;
  c.axes_dims_rope = {first, (d - first) / 2, (d - first) / 2};
  return validated(c, "FLUX transformer");
}

vae::VaeConfig detect_vae_config(const ShapeMap& shapes) {
  const Shapes s(shapes, "VAE");
  vae::VaeConfig c;
  c.latent_channels = s.dim(s.pick({"decoder.conv_in.weight"}), 1);
  c.out_channels = s.dim(s.pick({"decoder.conv_out.weight"}), 0);
  const bool ldm = s.has_prefix("decoder.up.");
  const int64_t levels = ldm ? s.count("decoder.up.") : s.count("decoder.up_blocks.");
  if (levels == 0) throw ModelError("VAE: cannot detect the configuration: no decoder up blocks");
  c.block_out_channels.assign(levels, 0);
  for (int64_t level = 0; level < levels; ++level) {
    // Decoder up blocks run from the deepest level down: diffusers up_blocks.i is level levels-1-i.
    const std::string key = ldm ? "decoder.up." + std::to_string(level) + ".block.0.conv1.weight"
                                : "decoder.up_blocks." + std::to_string(levels - 1 - level) + ".resnets.0.conv1.weight";
    if (!s.has(key)) throw ModelError("VAE: cannot detect the configuration: no tensor '" + key + "'");
    c.block_out_channels[level] = s.dim(key, 0);
  }
  const int64_t resnets = ldm ? s.count("decoder.up.0.block.") : s.count("decoder.up_blocks.0.resnets.");
  c.layers_per_block = resnets - 1;  // the decoder has one resnet more per level than the encoder
  c.mid_block_add_attention = s.has_prefix(ldm ? "decoder.mid.attn_1." : "decoder.mid_block.attentions.0.");
  // GroupNorm's group count is not in the weights; FLUX (128 channels) uses 32.
  c.norm_num_groups = std::min<int64_t>(32, std::max<int64_t>(1, c.block_out_channels[0] / 4));
  return validated(c, "VAE");
}

t5::T5Config detect_t5_config(const ShapeMap& shapes) {
  const Shapes s(shapes, "T5 encoder");
  t5::T5Config c;
  const std::string& embed = s.pick({"shared.weight", "encoder.embed_tokens.weight"});
  c.vocab_size = s.dim(embed, 0);
  c.d_model = s.dim(embed, 1);
  const std::string& bias = s.pick({"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"});
  c.relative_attention_num_buckets = s.dim(bias, 0);
  c.num_heads = s.dim(bias, 1);
  const int64_t inner = s.in_features(s.pick({"encoder.block.0.layer.0.SelfAttention.o.weight"}), c.d_model);
  if (c.num_heads <= 0 || inner % c.num_heads != 0) {
    throw ModelError("T5 encoder: attention width " + std::to_string(inner) + " is not a multiple of the head count " +
                     std::to_string(c.num_heads));
  }
  c.d_kv = inner / c.num_heads;
  c.is_gated_act = s.has("encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
  c.dense_act_fn = c.is_gated_act ? "gelu_new" : "relu";
  c.d_ff = s.in_features(s.pick({"encoder.block.0.layer.1.DenseReluDense.wo.weight"}), c.d_model);
  c.num_layers = s.count("encoder.block.");
  return validated(c, "T5 encoder");
}

clip::ClipTextConfig detect_clip_config(const ShapeMap& shapes) {
  const Shapes s(shapes, "CLIP text encoder");
  clip::ClipTextConfig c;
  const std::string& tokens = s.pick({"text_model.embeddings.token_embedding.weight"});
  c.vocab_size = s.dim(tokens, 0);
  c.hidden_size = s.dim(tokens, 1);
  c.max_position_embeddings = s.dim(s.pick({"text_model.embeddings.position_embedding.weight"}), 0);
  c.intermediate_size = s.dim(s.pick({"text_model.encoder.layers.0.mlp.fc1.bias"}), 0);
  c.num_hidden_layers = s.count("text_model.encoder.layers.");
  // Head count is not in the weights: CLIP-L uses 64-wide heads.
  int64_t head_dim = 64;
  for (int64_t candidate : {64, 32, 16, 8}) {
    head_dim = candidate;
    if (c.hidden_size % candidate == 0 && c.hidden_size / candidate >= 2) break;
  }
  c.num_attention_heads = c.hidden_size % head_dim == 0 ? c.hidden_size / head_dim : 1;
  return validated(c, "CLIP text encoder");
}

}  // namespace fluxbatch::models
