// diffusers FLUX transformer names -> BFL (the inverse of flux_bfl_to_diffusers in weight_map.cpp, for
// dense tensors): what `fluxbatch quantize --to fp8` writes ComfyUI-style single files with.
#include "fluxbatch/core/error.h"
#include "fluxbatch/models/weight_map.h"

#include <ATen/ATen.h>

#include <set>

namespace fluxbatch::models {
namespace {

class DiffusersSource {
 public:
  explicit DiffusersSource(const nn::TensorMap& weights) : weights_(weights) {}

  const at::Tensor& take(const std::string& key) {
    const auto it = weights_.find(key);
    FLUXBATCH_CHECK(it != weights_.end(), ModelError, "diffusers FLUX transformer: missing '" + key + "'");
    used_.insert(key);
    return it->second;
  }
  bool has(const std::string& key) const { return weights_.count(key) > 0; }
  // A diffusers key no rule took: a different architecture, which a BFL file could not express.
  void check_all_used() const {
    for (const auto& [name, tensor] : weights_) {
      FLUXBATCH_CHECK(used_.count(name) > 0, ModelError,
                      "diffusers FLUX transformer: '" + name + "' has no BFL name (not a FLUX.1 transformer?)");
    }
  }

 private:
  const nn::TensorMap& weights_;
  std::set<std::string> used_;
};

using Put = std::function<void(const std::string&, const at::Tensor&)>;

void move(DiffusersSource& src, const Put& put, const std::string& from, const std::string& to) {
  for (const char* t : {".weight", ".bias"}) put(to + t, src.take(from + t));
}

// Rows of `parts` (each "<p>" with .weight and .bias) joined in order, as BFL's fused Linears hold them.
void join(DiffusersSource& src, const Put& put, const std::vector<std::string>& parts, const std::string& to) {
  for (const char* t : {".weight", ".bias"}) {
    std::vector<at::Tensor> rows;
    for (const std::string& p : parts) rows.push_back(src.take(p + t));
    put(to + t, at::cat(rows, 0));
  }
}

at::Tensor swap_halves(const at::Tensor& t) {  // (scale, shift) <-> (shift, scale): its own inverse
  const auto halves = t.chunk(2, 0);
  return at::cat({halves[1], halves[0]}, 0);
}

}  // namespace

void flux_diffusers_to_bfl(const nn::TensorMap& diffusers, const flux::FluxConfig& config, const Put& put) {
  DiffusersSource src(diffusers);
  const std::string embed = "time_text_embed.";
  move(src, put, embed + "timestep_embedder.linear_1", "time_in.in_layer");
  move(src, put, embed + "timestep_embedder.linear_2", "time_in.out_layer");
  move(src, put, embed + "text_embedder.linear_1", "vector_in.in_layer");
  move(src, put, embed + "text_embedder.linear_2", "vector_in.out_layer");
  if (src.has(embed + "guidance_embedder.linear_1.weight")) {
    move(src, put, embed + "guidance_embedder.linear_1", "guidance_in.in_layer");
    move(src, put, embed + "guidance_embedder.linear_2", "guidance_in.out_layer");
  }
  move(src, put, "context_embedder", "txt_in");
  move(src, put, "x_embedder", "img_in");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".", d = "double_blocks." + std::to_string(i) + ".";
    move(src, put, b + "norm1.linear", d + "img_mod.lin");
    move(src, put, b + "norm1_context.linear", d + "txt_mod.lin");
    join(src, put, {b + "attn.to_q", b + "attn.to_k", b + "attn.to_v"}, d + "img_attn.qkv");
    join(src, put, {b + "attn.add_q_proj", b + "attn.add_k_proj", b + "attn.add_v_proj"}, d + "txt_attn.qkv");
    put(d + "img_attn.norm.query_norm.scale", src.take(b + "attn.norm_q.weight"));
    put(d + "img_attn.norm.key_norm.scale", src.take(b + "attn.norm_k.weight"));
    put(d + "txt_attn.norm.query_norm.scale", src.take(b + "attn.norm_added_q.weight"));
    put(d + "txt_attn.norm.key_norm.scale", src.take(b + "attn.norm_added_k.weight"));
    move(src, put, b + "ff.net.0.proj", d + "img_mlp.0");
    move(src, put, b + "ff.net.2", d + "img_mlp.2");
    move(src, put, b + "ff_context.net.0.proj", d + "txt_mlp.0");
    move(src, put, b + "ff_context.net.2", d + "txt_mlp.2");
    move(src, put, b + "attn.to_out.0", d + "img_attn.proj");
    move(src, put, b + "attn.to_add_out", d + "txt_attn.proj");
  }
  for (int64_t i = 0; i < config.num_single_layers; ++i) {
    const std::string b = "single_transformer_blocks." + std::to_string(i) + ".",
                      s = "single_blocks." + std::to_string(i) + ".";
    move(src, put, b + "norm.linear", s + "modulation.lin");
    join(src, put, {b + "attn.to_q", b + "attn.to_k", b + "attn.to_v", b + "proj_mlp"}, s + "linear1");
    put(s + "norm.query_norm.scale", src.take(b + "attn.norm_q.weight"));
    put(s + "norm.key_norm.scale", src.take(b + "attn.norm_k.weight"));
    move(src, put, b + "proj_out", s + "linear2");
  }
  move(src, put, "proj_out", "final_layer.linear");
  for (const char* t : {".weight", ".bias"}) {
    put(std::string("final_layer.adaLN_modulation.1") + t, swap_halves(src.take(std::string("norm_out.linear") + t)));
  }
  src.check_all_used();
}

nn::TensorMap flux_diffusers_to_bfl(const nn::TensorMap& diffusers, const flux::FluxConfig& config) {
  nn::TensorMap out;
  flux_diffusers_to_bfl(diffusers, config, [&](const std::string& name, const at::Tensor& t) { out[name] = t; });
  return out;
}

}  // namespace fluxbatch::models
