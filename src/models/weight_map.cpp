#include "fluxbatch/models/weight_map.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/models/weight_map_nf4.h"
#include "fluxbatch/nn/nf4_state.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <set>

namespace fluxbatch::models {

nn::TensorMap strip_prefix(const nn::TensorMap& weights, const std::string& prefix) {
  nn::TensorMap out;
  for (const auto& [name, tensor] : weights) {
    if (starts_with(name, prefix)) out.emplace(name.substr(prefix.size()), tensor);
  }
  return out;
}

// ---- FLUX transformer -----------------------------------------------------------------------------

namespace {

// A Linear weight of a BFL checkpoint: dense, or bitsandbytes NF4 (Forge's flux1-dev-bnb-nf4).
struct LinearWeight {
  at::Tensor dense;
  quant::Nf4Tensor nf4;
  at::Tensor scale_weight;  // scaled fp8: the per-tensor scale, which every row split from it shares
  bool is_nf4() const { return nf4.packed.defined(); }
};

class BflSource {
 public:
  explicit BflSource(const nn::TensorMap& weights) {
    nn::TensorMap all;
    for (const auto& [name, tensor] : weights) {
      const std::string key = starts_with(name, "model.diffusion_model.") ? name.substr(22) : name;
      all[key] = tensor;
    }
    // NF4 Linears are read whole (packed codes + statistics) and handed out as one weight.
    const std::string& state = nn::bnb_nf4_state_suffix();
    std::set<std::string> used;
    for (const auto& [name, tensor] : all) {
      if (ends_with(name, state)) {
        const std::string p = name.substr(0, name.size() - state.size());
        nf4_[p + ".weight"] = nn::read_bnb_nf4(all, p, &used);
      } else if (name.find("quant_state.bitsandbytes__") != std::string::npos) {
        throw ModelError("BFL FLUX checkpoint: '" + name + "': only bitsandbytes nf4 weights are supported");
      }
    }
    for (const auto& [name, tensor] : all) {
      if (used.count(name) != 0) continue;
      // Scaled fp8: scale_weight travels with its weight; scale_input is for fp8 matmuls with static
      // activation scales, which fluxbatch does not use (see nn::is_fp8_scale_key).
      if (ends_with(name, ".scale_weight")) {
        scales_[name.substr(0, name.size() - 13) + ".weight"] = tensor;
        continue;
      }
      if (ends_with(name, ".scale_input") || name == "scaled_fp8") continue;
      // NF4 statistics of a weight that has no quant state: refuse rather than load packed bytes as numbers.
      for (const char* stat : {".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map"}) {
        if (ends_with(name, stat)) {
          const std::string p = name.substr(0, name.size() - std::string(stat).size());
          if (all.count(p + state) != 0) {
            throw ModelError("BFL FLUX checkpoint: '" + name + "' does not belong to the quant state '" + p + state +
                             "' (nested statistics without nested_* fields?)");
          }
          throw ModelError("BFL FLUX checkpoint: '" + p + state + "' is missing ('" + name +
                           "' says the weight is bnb-NF4 packed)");
        }
      }
      map_[name] = tensor;
    }
  }
  // Removes and returns a key, as diffusers' checkpoint.pop does.
  at::Tensor pop(const std::string& key) {
    auto it = map_.find(key);
    if (it == map_.end()) {
      throw ModelError("BFL FLUX checkpoint: missing tensor '" + key + "' (expected by the diffusers conversion)");
    }
    at::Tensor t = it->second;
    map_.erase(it);
    return t;
  }
  LinearWeight pop_weight(const std::string& key) {
    auto it = nf4_.find(key);
    if (it == nf4_.end()) {
      LinearWeight w{pop(key), {}, {}};
      auto scale = scales_.find(key);
      if (scale != scales_.end()) {
        w.scale_weight = scale->second;
        scales_.erase(scale);
      }
      return w;
    }
    LinearWeight w{at::Tensor(), it->second};
    nf4_.erase(it);
    return w;
  }
  bool any_contains(const std::string& text) const {
    for (const auto& [name, tensor] : map_) {
      if (name.find(text) != std::string::npos) return true;
    }
    for (const auto& [name, w] : nf4_) {
      if (name.find(text) != std::string::npos) return true;
    }
    return false;
  }
  size_t left_count() const { return map_.size() + nf4_.size() + scales_.size(); }
  std::string left_example() const {
    return !map_.empty() ? map_.begin()->first : !nf4_.empty() ? nf4_.begin()->first : scales_.begin()->first;
  }

 private:
  nn::TensorMap map_;
  nn::TensorMap scales_;  // "<p>.weight" -> its scale_weight
  std::map<std::string, quant::Nf4Tensor> nf4_;
};

// Puts a weight under `key` ("<p>.weight"): dense as is, NF4 as bitsandbytes serializes it, which is
// what nn::load_nf4_state reads.
void put_weight(nn::TensorMap& out, const std::string& key, const LinearWeight& w) {
  if (!w.is_nf4()) {
    out[key] = w.dense;
    if (w.scale_weight.defined()) out[key.substr(0, key.size() - 7) + ".scale_weight"] = w.scale_weight;
    return;
  }
  nn::write_bnb_nf4(out, key.substr(0, key.size() - 7), w.nf4);  // strip ".weight"
}

// Splits rows [sizes...] of a fused weight or bias; checks the total.
std::vector<at::Tensor> split_rows(const at::Tensor& fused, const std::vector<int64_t>& sizes, const std::string& key) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  if (fused.dim() == 0 || fused.size(0) != total) {
    throw ModelError("BFL FLUX checkpoint: '" + key + "' has " + std::to_string(fused.dim() ? fused.size(0) : 0) +
                     " rows, expected " + std::to_string(total) + " for the detected configuration");
  }
  return at::split_with_sizes(fused, sizes, 0);
}

std::vector<LinearWeight> split_weight(const LinearWeight& fused, const std::vector<int64_t>& sizes,
                                       const std::string& key) {
  std::vector<LinearWeight> out;
  if (fused.is_nf4()) {
    for (auto& part : split_nf4_rows(fused.nf4, sizes, "BFL FLUX checkpoint: '" + key + "'")) {
      out.push_back(LinearWeight{at::Tensor(), std::move(part)});
    }
  } else {
    for (auto& part : split_rows(fused.dense, sizes, key)) out.push_back(LinearWeight{part, {}, fused.scale_weight});
  }
  return out;
}

at::Tensor swap_scale_shift(const at::Tensor& weight) {
  auto halves = weight.chunk(2, 0);
  return at::cat({halves[1], halves[0]}, 0);
}

LinearWeight swap_scale_shift(const LinearWeight& weight, const std::string& key) {
  if (!weight.is_nf4()) return LinearWeight{swap_scale_shift(weight.dense), {}, weight.scale_weight};
  const std::string what = "BFL FLUX checkpoint: '" + key + "'";
  FLUXBATCH_CHECK(weight.nf4.shape.size() == 2 && weight.nf4.shape[0] % 2 == 0, ModelError,
                  what + ": an odd number of rows cannot hold (shift, scale) halves");
  const int64_t half = weight.nf4.shape[0] / 2;
  auto halves = split_nf4_rows(weight.nf4, {half, half}, what);
  return LinearWeight{at::Tensor(), concat_nf4_rows({halves[1], halves[0]}, what)};
}

void move_linear(BflSource& src, nn::TensorMap& out, const std::string& from, const std::string& to) {
  put_weight(out, to + ".weight", src.pop_weight(from + ".weight"));
  out[to + ".bias"] = src.pop(from + ".bias");
}

void convert_double_block(BflSource& src, nn::TensorMap& out, int64_t i, int64_t inner) {
  const std::string d = "double_blocks." + std::to_string(i) + ".";
  const std::string b = "transformer_blocks." + std::to_string(i) + ".";
  move_linear(src, out, d + "img_mod.lin", b + "norm1.linear");
  move_linear(src, out, d + "txt_mod.lin", b + "norm1_context.linear");
  const std::vector<int64_t> qkv = {inner, inner, inner};
  const char* img[] = {"attn.to_q", "attn.to_k", "attn.to_v"};
  const char* txt[] = {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"};
  auto sample = split_weight(src.pop_weight(d + "img_attn.qkv.weight"), qkv, d + "img_attn.qkv.weight");
  auto context = split_weight(src.pop_weight(d + "txt_attn.qkv.weight"), qkv, d + "txt_attn.qkv.weight");
  auto sample_bias = split_rows(src.pop(d + "img_attn.qkv.bias"), qkv, d + "img_attn.qkv.bias");
  auto context_bias = split_rows(src.pop(d + "txt_attn.qkv.bias"), qkv, d + "txt_attn.qkv.bias");
  for (int k = 0; k < 3; ++k) {
    put_weight(out, b + img[k] + ".weight", sample[k]);
    put_weight(out, b + txt[k] + ".weight", context[k]);
    out[b + img[k] + ".bias"] = sample_bias[k];
    out[b + txt[k] + ".bias"] = context_bias[k];
  }
  out[b + "attn.norm_q.weight"] = src.pop(d + "img_attn.norm.query_norm.scale");
  out[b + "attn.norm_k.weight"] = src.pop(d + "img_attn.norm.key_norm.scale");
  out[b + "attn.norm_added_q.weight"] = src.pop(d + "txt_attn.norm.query_norm.scale");
  out[b + "attn.norm_added_k.weight"] = src.pop(d + "txt_attn.norm.key_norm.scale");
  move_linear(src, out, d + "img_mlp.0", b + "ff.net.0.proj");
  move_linear(src, out, d + "img_mlp.2", b + "ff.net.2");
  move_linear(src, out, d + "txt_mlp.0", b + "ff_context.net.0.proj");
  move_linear(src, out, d + "txt_mlp.2", b + "ff_context.net.2");
  move_linear(src, out, d + "img_attn.proj", b + "attn.to_out.0");
  move_linear(src, out, d + "txt_attn.proj", b + "attn.to_add_out");
}

void convert_single_block(BflSource& src, nn::TensorMap& out, int64_t i, int64_t inner) {
  const std::string s = "single_blocks." + std::to_string(i) + ".";
  const std::string b = "single_transformer_blocks." + std::to_string(i) + ".";
  move_linear(src, out, s + "modulation.lin", b + "norm.linear");
  const int64_t mlp_hidden = inner * 4;  // mlp_ratio 4.0
  const std::vector<int64_t> sizes = {inner, inner, inner, mlp_hidden};
  const char* names[] = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"};
  auto parts = split_weight(src.pop_weight(s + "linear1.weight"), sizes, s + "linear1.weight");
  auto biases = split_rows(src.pop(s + "linear1.bias"), sizes, s + "linear1.bias");
  for (int k = 0; k < 4; ++k) {
    put_weight(out, b + names[k] + ".weight", parts[k]);
    out[b + names[k] + ".bias"] = biases[k];
  }
  out[b + "attn.norm_q.weight"] = src.pop(s + "norm.query_norm.scale");
  out[b + "attn.norm_k.weight"] = src.pop(s + "norm.key_norm.scale");
  move_linear(src, out, s + "linear2", b + "proj_out");
}

}  // namespace

nn::TensorMap flux_bfl_to_diffusers(const nn::TensorMap& bfl, const flux::FluxConfig& config) {
  BflSource src(bfl);
  nn::TensorMap out;
  move_linear(src, out, "time_in.in_layer", "time_text_embed.timestep_embedder.linear_1");
  move_linear(src, out, "time_in.out_layer", "time_text_embed.timestep_embedder.linear_2");
  move_linear(src, out, "vector_in.in_layer", "time_text_embed.text_embedder.linear_1");
  move_linear(src, out, "vector_in.out_layer", "time_text_embed.text_embedder.linear_2");
  if (src.any_contains("guidance")) {
    move_linear(src, out, "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1");
    move_linear(src, out, "guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2");
  }
  move_linear(src, out, "txt_in", "context_embedder");
  move_linear(src, out, "img_in", "x_embedder");
  const int64_t inner = config.inner_dim();
  for (int64_t i = 0; i < config.num_layers; ++i) convert_double_block(src, out, i, inner);
  for (int64_t i = 0; i < config.num_single_layers; ++i) convert_single_block(src, out, i, inner);
  move_linear(src, out, "final_layer.linear", "proj_out");
  put_weight(out, "norm_out.linear.weight",
             swap_scale_shift(src.pop_weight("final_layer.adaLN_modulation.1.weight"), "final_layer.adaLN_modulation.1.weight"));
  out["norm_out.linear.bias"] = swap_scale_shift(src.pop("final_layer.adaLN_modulation.1.bias"));
  if (src.left_count() != 0) {
    // diffusers drops leftovers silently; say so, since it usually means a different architecture.
    log::warn("BFL FLUX checkpoint: " + std::to_string(src.left_count()) + " tensors not used by the conversion, e.g. '" +
              src.left_example() + "'");
  }
  return out;
}

// ---- VAE ------------------------------------------------------------------------------------------

namespace {

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
    text.replace(pos, from.size(), to);
  }
  return text;
}

// Reads "<head><N>.<rest>" -> N and rest; false if the key does not have that form.
bool indexed(const std::string& key, const std::string& head, int64_t* index, std::string* rest) {
  if (!starts_with(key, head)) return false;
  size_t pos = head.size();
  size_t end = pos;
  while (end < key.size() && std::isdigit(static_cast<unsigned char>(key[end]))) ++end;
  if (end == pos || end >= key.size() || key[end] != '.') return false;
  *index = std::stoll(key.substr(pos, end - pos));
  *rest = key.substr(end + 1);
  return true;
}

// update_vae_attentions_ldm_to_diffusers: renames and turns 1x1 convs into Linear weights.
void put_attention(nn::TensorMap& out, const std::string& side, const std::string& rest, const at::Tensor& t) {
  std::string name = side + ".mid_block.attentions.0." + rest;
  name = replace_all(name, "norm.weight", "group_norm.weight");
  name = replace_all(name, "norm.bias", "group_norm.bias");
  for (const char* p : {"q", "k", "v"}) {
    name = replace_all(name, std::string(p) + ".weight", std::string("to_") + p + ".weight");
    name = replace_all(name, std::string(p) + ".bias", std::string("to_") + p + ".bias");
  }
  name = replace_all(name, "proj_out.weight", "to_out.0.weight");
  name = replace_all(name, "proj_out.bias", "to_out.0.bias");
  at::Tensor value = t;
  if (value.dim() == 3) value = value.select(2, 0);
  if (value.dim() == 4) value = value.select(3, 0).select(2, 0);
  out[name] = value;
}

int64_t count_indexed(const nn::TensorMap& weights, const std::string& head) {
  int64_t count = 0;
  for (const auto& [name, tensor] : weights) {
    int64_t index;
    std::string rest;
    if (indexed(name, head, &index, &rest)) count = std::max<int64_t>(count, index + 1);
  }
  return count;
}

}  // namespace

nn::TensorMap vae_ldm_to_diffusers(const nn::TensorMap& ldm) {
  static const std::map<std::string, std::string> kDirect = {
      {"encoder.conv_in.weight", "encoder.conv_in.weight"},   {"encoder.conv_in.bias", "encoder.conv_in.bias"},
      {"encoder.conv_out.weight", "encoder.conv_out.weight"}, {"encoder.conv_out.bias", "encoder.conv_out.bias"},
      {"encoder.norm_out.weight", "encoder.conv_norm_out.weight"},
      {"encoder.norm_out.bias", "encoder.conv_norm_out.bias"},
      {"decoder.conv_in.weight", "decoder.conv_in.weight"},   {"decoder.conv_in.bias", "decoder.conv_in.bias"},
      {"decoder.conv_out.weight", "decoder.conv_out.weight"}, {"decoder.conv_out.bias", "decoder.conv_out.bias"},
      {"decoder.norm_out.weight", "decoder.conv_norm_out.weight"},
      {"decoder.norm_out.bias", "decoder.conv_norm_out.bias"},
      {"quant_conv.weight", "quant_conv.weight"},             {"quant_conv.bias", "quant_conv.bias"},
      {"post_quant_conv.weight", "post_quant_conv.weight"},   {"post_quant_conv.bias", "post_quant_conv.bias"},
  };
  const int64_t num_up = count_indexed(ldm, "decoder.up.");
  nn::TensorMap out;
  for (const auto& [key, tensor] : ldm) {
    auto direct = kDirect.find(key);
    int64_t i;
    std::string rest;
    if (direct != kDirect.end()) {
      out[direct->second] = tensor;
    } else if (indexed(key, "encoder.down.", &i, &rest)) {
      int64_t k;
      std::string tail;
      const std::string level = "encoder.down_blocks." + std::to_string(i);
      if (indexed(rest, "block.", &k, &tail)) {
        out[level + ".resnets." + std::to_string(k) + "." + replace_all(tail, "nin_shortcut", "conv_shortcut")] = tensor;
      } else if (rest == "downsample.conv.weight" || rest == "downsample.conv.bias") {
        out[level + ".downsamplers.0.conv." + rest.substr(16)] = tensor;
      }
    } else if (indexed(key, "decoder.up.", &i, &rest)) {
      int64_t k;
      std::string tail;
      const std::string level = "decoder.up_blocks." + std::to_string(num_up - 1 - i);
      if (indexed(rest, "block.", &k, &tail)) {
        out[level + ".resnets." + std::to_string(k) + "." + replace_all(tail, "nin_shortcut", "conv_shortcut")] = tensor;
      } else if (rest == "upsample.conv.weight" || rest == "upsample.conv.bias") {
        out[level + ".upsamplers.0.conv." + rest.substr(14)] = tensor;
      }
    } else {
      for (const char* side : {"encoder", "decoder"}) {
        const std::string mid = std::string(side) + ".mid.";
        if (!starts_with(key, mid)) continue;
        const std::string tail = key.substr(mid.size());
        for (int b = 1; b <= 2; ++b) {
          const std::string block = "block_" + std::to_string(b) + ".";
          if (starts_with(tail, block)) {
            out[std::string(side) + ".mid_block.resnets." + std::to_string(b - 1) + "." +
                replace_all(tail.substr(block.size()), "nin_shortcut", "conv_shortcut")] = tensor;
          }
        }
        if (starts_with(tail, "attn_1.")) put_attention(out, side, tail.substr(7), tensor);
      }
    }
  }
  return out;
}

// ---- text encoders --------------------------------------------------------------------------------

// ComfyUI "scaled fp8" text encoders: "<p>.weight" e4m3 with "<p>.scale_weight" beside it, which
// nn::load_state applies; the `scaled_fp8` marker and the scale_input values are of no use here.
void drop_scaled_fp8_extras(nn::TensorMap& weights) {
  for (auto it = weights.begin(); it != weights.end();) {
    it = it->first == "scaled_fp8" || ends_with(it->first, ".scale_input") ? weights.erase(it) : std::next(it);
  }
}


nn::TensorMap t5_to_transformers(const nn::TensorMap& weights) {
  nn::TensorMap out;
  for (const auto& [name, tensor] : weights) {
    // Full encoder-decoder checkpoints: FLUX uses the encoder only.
    if (!starts_with(name, "decoder.") && !starts_with(name, "lm_head.")) out.emplace(name, tensor);
  }
  drop_scaled_fp8_extras(out);
  auto embed = out.find("encoder.embed_tokens.weight");
  if (embed != out.end()) {
    if (out.count("shared.weight") == 0) out["shared.weight"] = embed->second;
    out.erase("encoder.embed_tokens.weight");
  }
  return out;
}

nn::TensorMap clip_to_transformers(const nn::TensorMap& weights) {
  nn::TensorMap out;
  for (const auto& [name, tensor] : weights) {
    if (starts_with(name, "text_projection") || name == "logit_scale" ||
        name == "text_model.embeddings.position_ids") {
      continue;
    }
    out.emplace(name, tensor);
  }
  drop_scaled_fp8_extras(out);
  return out;
}

ShapeMap shapes_of(const nn::TensorMap& weights) {
  ShapeMap shapes;
  for (const auto& [name, tensor] : weights) shapes.emplace(name, tensor.sizes().vec());
  return shapes;
}

flux::FluxConfig detect_flux_config(const nn::TensorMap& weights) { return detect_flux_config(shapes_of(weights)); }
vae::VaeConfig detect_vae_config(const nn::TensorMap& weights) { return detect_vae_config(shapes_of(weights)); }
t5::T5Config detect_t5_config(const nn::TensorMap& weights) { return detect_t5_config(shapes_of(weights)); }
clip::ClipTextConfig detect_clip_config(const nn::TensorMap& weights) {
  return detect_clip_config(shapes_of(weights));
}

}  // namespace fluxbatch::models
