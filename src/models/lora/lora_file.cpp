#include "fluxbatch/models/lora/lora_file.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>
#include <set>

namespace fluxbatch::models::lora {
namespace {

using Split = std::vector<std::string>;  // our modules a fused layer's rows go to, in row order

bool take(std::string& s, const std::string& prefix) {
  if (s.rfind(prefix, 0) != 0) return false;
  s.erase(0, prefix.size());
  return true;
}

// A decimal block index followed by `sep` ("12_rest" -> 12, "rest").
bool take_index(std::string& s, char sep, int64_t* index) {
  size_t n = 0;
  while (n < s.size() && n < 4 && std::isdigit(static_cast<unsigned char>(s[n]))) ++n;
  if (n == 0 || n >= s.size() || s[n] != sep) return false;
  *index = std::stoll(s.substr(0, n));
  s.erase(0, n + 1);
  return true;
}

// Kohya's module names for FLUX (sd-scripts' lora_flux.py; diffusers' _convert_sd_scripts_to_ai_toolkit).
std::optional<Split> kohya_unet_module(std::string name) {
  const std::string d = "transformer_blocks.", s = "single_transformer_blocks.";
  int64_t i = 0;
  if (take(name, "double_blocks_") && take_index(name, '_', &i)) {
    const std::string b = d + std::to_string(i) + ".";
    static const std::map<std::string, Split> kDouble = {
        {"img_attn_proj", {"attn.to_out.0"}},
        {"img_attn_qkv", {"attn.to_q", "attn.to_k", "attn.to_v"}},
        {"img_mlp_0", {"ff.net.0.proj"}},
        {"img_mlp_2", {"ff.net.2"}},
        {"img_mod_lin", {"norm1.linear"}},
        {"txt_attn_proj", {"attn.to_add_out"}},
        {"txt_attn_qkv", {"attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"}},
        {"txt_mlp_0", {"ff_context.net.0.proj"}},
        {"txt_mlp_2", {"ff_context.net.2"}},
        {"txt_mod_lin", {"norm1_context.linear"}}};
    const auto it = kDouble.find(name);
    if (it == kDouble.end()) return std::nullopt;
    Split out;
    for (const std::string& m : it->second) out.push_back(b + m);
    return out;
  }
  if (take(name, "single_blocks_") && take_index(name, '_', &i)) {
    const std::string b = s + std::to_string(i) + ".";
    if (name == "linear1") return Split{b + "attn.to_q", b + "attn.to_k", b + "attn.to_v", b + "proj_mlp"};
    if (name == "linear2") return Split{b + "proj_out"};
    if (name == "modulation_lin") return Split{b + "norm.linear"};
    return std::nullopt;
  }
  static const std::map<std::string, std::string> kOther = {
      {"img_in", "x_embedder"},
      {"txt_in", "context_embedder"},
      {"time_in_in_layer", "time_text_embed.timestep_embedder.linear_1"},
      {"time_in_out_layer", "time_text_embed.timestep_embedder.linear_2"},
      {"vector_in_in_layer", "time_text_embed.text_embedder.linear_1"},
      {"vector_in_out_layer", "time_text_embed.text_embedder.linear_2"},
      {"guidance_in_in_layer", "time_text_embed.guidance_embedder.linear_1"},
      {"guidance_in_out_layer", "time_text_embed.guidance_embedder.linear_2"},
      {"final_layer_linear", "proj_out"},
      {"final_layer_adaLN_modulation_1", "norm_out.linear"}};
  const auto it = kOther.find(name);
  if (it == kOther.end()) return std::nullopt;
  return Split{it->second};
}

// "text_model_encoder_layers_3_self_attn_q_proj" -> "text_model.encoder.layers.3.self_attn.q_proj".
std::optional<std::string> kohya_te_module(std::string name) {
  int64_t i = 0;
  if (!take(name, "text_model_encoder_layers_") || !take_index(name, '_', &i)) return std::nullopt;
  static const std::map<std::string, std::string> kLayer = {
      {"self_attn_q_proj", "self_attn.q_proj"}, {"self_attn_k_proj", "self_attn.k_proj"},
      {"self_attn_v_proj", "self_attn.v_proj"}, {"self_attn_out_proj", "self_attn.out_proj"},
      {"mlp_fc1", "mlp.fc1"},                   {"mlp_fc2", "mlp.fc2"}};
  const auto it = kLayer.find(name);
  if (it == kLayer.end()) return std::nullopt;
  return "text_model.encoder.layers." + std::to_string(i) + "." + it->second;
}

std::optional<Split> xlabs_module(std::string name) {
  take(name, "diffusion_model.");
  int64_t i = 0;
  if (take(name, "double_blocks.") && take_index(name, '.', &i)) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".attn.";
    if (name == "processor.proj_lora1") return Split{b + "to_out.0"};
    if (name == "processor.proj_lora2") return Split{b + "to_add_out"};
    if (name == "processor.qkv_lora1") return Split{b + "to_q", b + "to_k", b + "to_v"};
    if (name == "processor.qkv_lora2") return Split{b + "add_q_proj", b + "add_k_proj", b + "add_v_proj"};
    return std::nullopt;
  }
  if (take(name, "single_blocks.") && take_index(name, '.', &i)) {
    const std::string b = "single_transformer_blocks." + std::to_string(i) + ".";
    if (name == "processor.proj_lora") return Split{b + "proj_out"};
    if (name == "processor.qkv_lora") return Split{b + "attn.to_q", b + "attn.to_k", b + "attn.to_v"};
  }
  return std::nullopt;
}

class Reader {
 public:
  explicit Reader(const std::string& path) : file_(io::SafetensorsFile::open(path)) {
    out_.path = path;
    out_.file_bytes = file_->file_size();
    for (const io::TensorView& t : file_->tensors()) names_.push_back(t.name);
  }

  LoraFile read() {
    bool kohya = false, peft_prefixed = false, xlabs = false;
    for (const std::string& k : names_) {
      kohya = kohya || k.find(".lora_down.weight") != std::string::npos;
      peft_prefixed = peft_prefixed || k.rfind("transformer.", 0) == 0 || k.rfind("text_encoder.", 0) == 0;
      xlabs = xlabs || k.find("processor") != std::string::npos;
    }
    // diffusers' order of detection (FluxLoraLoaderMixin.lora_state_dict): Kohya keys first, unless they
    // carry diffusers' own prefixes (lora_down/lora_up under "transformer.").
    if (kohya && !peft_prefixed) {
      out_.format = LoraFormat::kKohya;
      read_kohya();
    } else if (xlabs && !peft_prefixed) {
      out_.format = LoraFormat::kXLabs;
      read_xlabs();
    } else {
      out_.format = LoraFormat::kPeft;
      read_peft();
    }
    FLUXBATCH_CHECK(!out_.targets.empty(), ModelError,
                    out_.path + ": no LoRA weights found (" + std::to_string(names_.size()) +
                        " tensors; expected diffusers/PEFT lora_A/lora_B, Kohya lora_down/lora_up or XLabs "
                        "processor.*_lora keys)");
    for (const std::string& k : names_) {
      if (!used_.count(k)) out_.unknown_keys.push_back(k);
    }
    return std::move(out_);
  }

 private:
  at::Tensor tensor(const std::string& key) {
    used_.insert(key);
    at::Tensor t = nn::to_tensor(file_, key).to(at::kFloat);
    out_.parameters += t.numel();
    return t;
  }
  bool has(const std::string& key) const { return file_->find(key) != nullptr; }

  // The pair (down, up) of a module; ModelError when one half is missing or they do not chain.
  std::pair<at::Tensor, at::Tensor> pair(const std::string& stem, const std::string& down_key,
                                         const std::string& up_key) {
    FLUXBATCH_CHECK(has(down_key) && has(up_key), ModelError,
                    out_.path + ": " + stem + " has " + (has(down_key) ? down_key : up_key) + " but no " +
                        (has(down_key) ? up_key : down_key));
    at::Tensor down = tensor(down_key), up = tensor(up_key);
    FLUXBATCH_CHECK(down.dim() == 2 && up.dim() == 2 && up.size(1) == down.size(0), ModelError,
                    out_.path + ": " + stem + ": down " + nn::shape_string(down.sizes()) + " and up " +
                        nn::shape_string(up.sizes()) + " are not a LoRA pair ([rank, in] and [out, rank])");
    return {down, up};
  }

  // `up`'s rows to the modules of a fused layer: equal parts, except the single blocks' linear1,
  // whose first three parts (q, k, v) are as wide as the hidden size (`down`'s columns), the MLP the rest.
  void add_split(LoraComponent component, const Split& modules, const std::string& stem, const at::Tensor& down,
                 const at::Tensor& up, double alpha_scale) {
    const auto parts = static_cast<int64_t>(modules.size());
    std::vector<int64_t> rows(modules.size(), up.size(0) / parts);
    if (modules.size() == 4) {  // q | k | v | MLP
      const int64_t hidden = down.size(1);
      rows = {hidden, hidden, hidden, up.size(0) - 3 * hidden};
      FLUXBATCH_CHECK(rows[3] > 0, ModelError,
                      out_.path + ": " + stem + ": up has " + std::to_string(up.size(0)) +
                          " rows, fewer than q, k and v of hidden size " + std::to_string(hidden) + " need");
    } else {
      FLUXBATCH_CHECK(up.size(0) % parts == 0, ModelError,
                      out_.path + ": " + stem + ": up has " + std::to_string(up.size(0)) + " rows, not " +
                          std::to_string(parts) + " equal parts");
    }
    int64_t row = 0;
    for (size_t i = 0; i < modules.size(); ++i) {
      LoraTarget t;
      t.component = component;
      t.module = modules[i];
      t.down = down;
      t.up = up.narrow(0, row, rows[i]).contiguous();
      t.alpha_scale = alpha_scale;
      t.source = stem;
      row += rows[i];
      out_.targets.push_back(std::move(t));
    }
  }

  void read_kohya() {
    std::set<std::string> stems;
    for (const std::string& k : names_) {
      for (const char* suffix : {".lora_down.weight", ".lora_up.weight", ".alpha"}) {
        if (ends_with(k, suffix)) stems.insert(k.substr(0, k.size() - std::string(suffix).size()));
      }
    }
    for (const std::string& stem : stems) {
      std::string name = stem;
      // ComfyUI writes the BFL module path with dots: "diffusion_model.double_blocks.0.img_attn.qkv".
      if (take(name, "diffusion_model.")) {
        std::replace(name.begin(), name.end(), '.', '_');
        name = "lora_unet_" + name;
      } else if (take(name, "text_encoders.clip_l.transformer.")) {
        std::replace(name.begin(), name.end(), '.', '_');
        name = "lora_te_" + name;
      }
      std::optional<Split> modules;
      LoraComponent component = LoraComponent::kTransformer;
      if (take(name, "lora_unet_")) {
        modules = kohya_unet_module(name);
      } else if (take(name, "lora_te1_") || take(name, "lora_te_")) {
        component = LoraComponent::kTextEncoder;
        if (auto m = kohya_te_module(name)) modules = Split{*m};
      }
      if (!modules) continue;  // its keys stay unused: reported as unknown
      auto [down, up] = pair(stem, stem + ".lora_down.weight", stem + ".lora_up.weight");
      // Kohya scales by alpha / rank in its forward; diffusers folds that into the weights, split
      // between down and up the same way (scale_down doubled, scale_up halved while scale_down * 2 <
      // scale_up), and so does this reader, so the products round alike.
      const double rank = static_cast<double>(down.size(0));
      double alpha = rank;
      if (has(stem + ".alpha")) alpha = tensor(stem + ".alpha").item<double>();
      double scale_down = alpha / rank, scale_up = 1.0;
      while (scale_down * 2 < scale_up) {
        scale_down *= 2;
        scale_up /= 2;
      }
      down = down * scale_down;
      up = up * scale_up;
      if (stem.find("final_layer_adaLN_modulation_1") != std::string::npos ||
          stem.find("final_layer.adaLN_modulation.1") != std::string::npos) {
        // BFL's final modulation is (shift, scale); diffusers' norm_out.linear is (scale, shift).
        const auto halves = up.chunk(2, 0);
        up = at::cat({halves[1], halves[0]}, 0);
      }
      add_split(component, *modules, stem, down, up, 1.0);
    }
  }

  void read_xlabs() {
    std::set<std::string> stems;
    for (const std::string& k : names_) {
      for (const char* suffix : {".down.weight", ".up.weight"}) {
        if (ends_with(k, suffix)) stems.insert(k.substr(0, k.size() - std::string(suffix).size()));
      }
    }
    for (const std::string& stem : stems) {
      const std::optional<Split> modules = xlabs_module(stem);
      if (!modules) continue;
      auto [down, up] = pair(stem, stem + ".down.weight", stem + ".up.weight");
      add_split(LoraComponent::kTransformer, *modules, stem, down, up, 1.0);  // XLabs has no alpha
    }
  }

  // diffusers' metadata ("lora_adapter_metadata": {"transformer.r": 16, "transformer.lora_alpha": 8, ...}).
  struct PeftConfig {
    std::optional<double> r, alpha;
    std::map<std::string, double> rank_pattern, alpha_pattern;
    bool rslora = false;
  };

  std::map<std::string, PeftConfig> peft_configs() {
    std::map<std::string, PeftConfig> out;
    const auto it = file_->metadata().find("lora_adapter_metadata");
    if (it == file_->metadata().end()) return out;
    nlohmann::json meta;
    try {
      meta = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception&) {
      throw ModelError(out_.path + ": the \"lora_adapter_metadata\" is not valid JSON");
    }
    if (!meta.is_object()) return out;
    for (const auto& [key, value] : meta.items()) {
      const size_t dot = key.find('.');
      if (dot == std::string::npos) continue;
      PeftConfig& c = out[key.substr(0, dot)];
      const std::string field = key.substr(dot + 1);
      if (field == "r" && value.is_number()) c.r = value.get<double>();
      if (field == "lora_alpha" && value.is_number()) c.alpha = value.get<double>();
      if (field == "use_rslora" && value.is_boolean()) c.rslora = value.get<bool>();
      if ((field == "rank_pattern" || field == "alpha_pattern") && value.is_object()) {
        for (const auto& [pattern, v] : value.items()) {
          if (v.is_number()) (field == "rank_pattern" ? c.rank_pattern : c.alpha_pattern)[pattern] = v.get<double>();
        }
      }
    }
    return out;
  }

  // PEFT's pattern match: the key is the module's name or a dotted suffix of it.
  static std::optional<double> pattern_value(const std::map<std::string, double>& patterns, const std::string& module) {
    for (const auto& [pattern, value] : patterns) {
      if (module == pattern || ends_with(module, "." + pattern)) return value;
    }
    return std::nullopt;
  }

  void read_peft() {
    const std::map<std::string, PeftConfig> configs = peft_configs();
    std::set<std::string> stems;
    for (const std::string& k : names_) {
      for (const char* suffix : {".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight"}) {
        if (ends_with(k, suffix)) stems.insert(k.substr(0, k.size() - std::string(suffix).size()));
      }
    }
    for (const std::string& stem : stems) {
      std::string module = stem;
      LoraComponent component;
      std::string prefix;
      if (take(module, "transformer.")) {
        component = LoraComponent::kTransformer;
        prefix = "transformer";
      } else if (take(module, "text_encoder.")) {
        component = LoraComponent::kTextEncoder;
        prefix = "text_encoder";
      } else {
        continue;  // another component (text_encoder_2, unet): unknown keys
      }
      const bool ab = has(stem + ".lora_A.weight") || has(stem + ".lora_B.weight");
      auto [down, up] = ab ? pair(stem, stem + ".lora_A.weight", stem + ".lora_B.weight")
                           : pair(stem, stem + ".lora_down.weight", stem + ".lora_up.weight");
      // Scaling as PEFT computes it: lora_alpha / r, per module from an "alpha" key (diffusers'
      // network alphas) or the saved LoraConfig; neither: alpha = rank, scale 1.
      double rank = static_cast<double>(down.size(0));
      double alpha = rank;
      bool rslora = false;
      if (has(stem + ".alpha")) {
        alpha = tensor(stem + ".alpha").item<double>();
      } else if (const auto c = configs.find(prefix); c != configs.end()) {
        const PeftConfig& config = c->second;
        if (auto r = pattern_value(config.rank_pattern, module)) {
          rank = *r;
        } else if (config.r) {
          rank = *config.r;
        }
        if (auto a = pattern_value(config.alpha_pattern, module)) {
          alpha = *a;
        } else if (config.alpha) {
          alpha = *config.alpha;
        } else {
          alpha = rank;
        }
        rslora = config.rslora;
      }
      add_split(component, {module}, stem, down, up, rslora ? alpha / std::sqrt(rank) : alpha / rank);
    }
  }

 private:
  std::shared_ptr<io::SafetensorsFile> file_;
  std::vector<std::string> names_;
  std::set<std::string> used_;
  LoraFile out_;
};

}  // namespace

const char* format_name(LoraFormat format) {
  switch (format) {
    case LoraFormat::kPeft: return "diffusers/PEFT";
    case LoraFormat::kKohya: return "Kohya/ComfyUI";
    case LoraFormat::kXLabs: return "XLabs";
  }
  return "?";
}

const char* component_name(LoraComponent component) {
  return component == LoraComponent::kTransformer ? "transformer" : "text_encoder";
}

std::vector<int64_t> LoraFile::ranks() const {
  std::set<int64_t> out;
  for (const LoraTarget& t : targets) out.insert(t.rank());
  return {out.begin(), out.end()};
}

bool LoraFile::has(LoraComponent component) const {
  return std::any_of(targets.begin(), targets.end(), [&](const LoraTarget& t) { return t.component == component; });
}

LoraFile read_lora_file(const std::string& path) { return Reader(path).read(); }

LoraFit check_fit(const LoraFile& file, const std::map<LoraComponent, const LinearShapes*>& shapes) {
  LoraFit fit;
  for (const LoraTarget& t : file.targets) {
    const auto component = shapes.find(t.component);
    const LinearShapes* linears = component == shapes.end() ? nullptr : component->second;
    const auto it = linears == nullptr ? LinearShapes::const_iterator() : linears->find(t.module);
    if (linears == nullptr || it == linears->end()) {
      fit.missing_modules.push_back(std::string(component_name(t.component)) + "." + t.module + " (from " +
                                    t.source + ")");
      continue;
    }
    const auto [in, out] = it->second;
    if (t.down.size(1) != in || t.up.size(0) != out) {
      fit.shape_errors.push_back(std::string(component_name(t.component)) + "." + t.module + ": the LoRA maps " +
                                 std::to_string(t.down.size(1)) + " -> " + std::to_string(t.up.size(0)) +
                                 " features (rank " + std::to_string(t.rank()) + ", from " + t.source +
                                 "), the layer " + std::to_string(in) + " -> " + std::to_string(out));
    }
  }
  return fit;
}

void drop_missing(LoraFile& file, const std::map<LoraComponent, const LinearShapes*>& shapes) {
  file.targets.erase(std::remove_if(file.targets.begin(), file.targets.end(),
                                    [&](const LoraTarget& t) {
                                      const auto c = shapes.find(t.component);
                                      return c == shapes.end() || c->second == nullptr ||
                                             !c->second->count(t.module);
                                    }),
                     file.targets.end());
}

}  // namespace fluxbatch::models::lora
