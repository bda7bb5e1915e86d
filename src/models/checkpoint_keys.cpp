// Layout recognition from tensor names (torch-free; declared in checkpoint_keys.h).
#include "fluxbatch/models/checkpoint_keys.h"

#include "fluxbatch/core/strings.h"

#include <algorithm>
#include <set>
#include <utility>

namespace fluxbatch::models {
namespace {

bool starts_with_any(const std::string& text, std::initializer_list<const char*> prefixes) {
  for (const char* p : prefixes) {
    if (starts_with(text, p)) return true;
  }
  return false;
}

// Component and dialect of one bare (prefix-free) key; false when it belongs to none.
bool classify_bare(const std::string& key, Component* component, KeyDialect* dialect) {
  if (starts_with_any(key, {"double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.",
                            "guidance_in.", "final_layer."})) {
    *component = Component::kTransformer;
    *dialect = KeyDialect::kBfl;
  } else if (starts_with_any(key, {"transformer_blocks.", "single_transformer_blocks.", "x_embedder.",
                                   "context_embedder.", "time_text_embed.", "norm_out.", "proj_out."})) {
    *component = Component::kTransformer;
    *dialect = KeyDialect::kDiffusers;
  } else if (starts_with_any(key, {"text_model.", "text_projection.", "logit_scale"})) {
    *component = Component::kTextEncoder;
    *dialect = KeyDialect::kTransformers;
  } else if (starts_with_any(key, {"encoder.block.", "encoder.final_layer_norm.", "encoder.embed_tokens.", "shared.",
                                   "decoder.block.", "decoder.final_layer_norm.", "decoder.embed_tokens.", "lm_head."})) {
    *component = Component::kTextEncoder2;
    *dialect = KeyDialect::kTransformers;
  } else if (starts_with_any(key, {"decoder.up_blocks.", "decoder.mid_block.", "decoder.conv_norm_out.",
                                   "encoder.down_blocks.", "encoder.mid_block.", "encoder.conv_norm_out."})) {
    *component = Component::kVae;
    *dialect = KeyDialect::kDiffusers;
  } else if (starts_with_any(key, {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."})) {
    *component = Component::kVae;
    *dialect = KeyDialect::kLdm;  // shared keys (conv_in, conv_out) too: settled per component below
  } else {
    return false;
  }
  return true;
}

}  // namespace

const char* component_name(Component component) {
  switch (component) {
    case Component::kTransformer: return "transformer";
    case Component::kTextEncoder: return "text_encoder";
    case Component::kTextEncoder2: return "text_encoder_2";
    case Component::kVae: return "vae";
  }
  return "?";
}

const char* dialect_name(KeyDialect dialect) {
  switch (dialect) {
    case KeyDialect::kDiffusers: return "diffusers";
    case KeyDialect::kBfl: return "bfl";
    case KeyDialect::kLdm: return "ldm";
    case KeyDialect::kTransformers: return "transformers";
  }
  return "?";
}

const std::vector<PrefixRule>& known_prefixes() {
  static const std::vector<PrefixRule> kRules = [] {
    std::vector<PrefixRule> rules = {
        {"model.diffusion_model.", Component::kTransformer},                 // ComfyUI / Forge / LDM
        {"diffusion_model.", Component::kTransformer},
        {"transformer.", Component::kTransformer},                           // diffusers-in-one
        {"first_stage_model.", Component::kVae},                             // LDM / ComfyUI
        {"vae.", Component::kVae},                                           // Forge
        {"text_encoders.clip_l.transformer.", Component::kTextEncoder},      // ComfyUI / Forge
        {"cond_stage_model.transformer.", Component::kTextEncoder},          // LDM
        {"conditioner.embedders.0.transformer.", Component::kTextEncoder},   // SGM
        {"text_encoder.", Component::kTextEncoder},
        {"text_encoders.t5xxl.transformer.", Component::kTextEncoder2},      // ComfyUI / Forge
        {"text_encoder_2.", Component::kTextEncoder2},
    };
    // Longest first so that nested prefixes win.
    std::stable_sort(rules.begin(), rules.end(),
                     [](const PrefixRule& a, const PrefixRule& b) { return a.prefix.size() > b.prefix.size(); });
    return rules;
  }();
  return kRules;
}

std::vector<ComponentKeys> classify_keys(const std::vector<std::string>& names) {
  struct Group {
    size_t count = 0;
    std::set<KeyDialect> dialects;
  };
  std::map<std::pair<Component, std::string>, Group> groups;
  for (const auto& name : names) {
    std::string prefix;
    for (const auto& rule : known_prefixes()) {
      if (starts_with(name, rule.prefix)) {
        prefix = rule.prefix;
        break;
      }
    }
    Component component;
    KeyDialect dialect;
    if (!classify_bare(name.substr(prefix.size()), &component, &dialect)) continue;
    if (!prefix.empty()) {
      // The prefix decides the component; the bare rules only tell the dialect.
      for (const auto& rule : known_prefixes()) {
        if (rule.prefix == prefix) component = rule.component;
      }
      if (component == Component::kTextEncoder || component == Component::kTextEncoder2) {
        dialect = KeyDialect::kTransformers;
      }
    }
    Group& group = groups[{component, prefix}];
    ++group.count;
    group.dialects.insert(dialect);
  }
  std::vector<ComponentKeys> out;
  for (const auto& [key, group] : groups) {
    ComponentKeys keys{key.first, key.second, *group.dialects.begin(), group.count};
    // A diffusers VAE also has bare encoder./decoder. keys (conv_in ...) that look LDM.
    if (key.first == Component::kVae) {
      keys.dialect = group.dialects.count(KeyDialect::kDiffusers) ? KeyDialect::kDiffusers : KeyDialect::kLdm;
    }
    if (key.first == Component::kTransformer) {
      keys.dialect = group.dialects.count(KeyDialect::kBfl) ? KeyDialect::kBfl : KeyDialect::kDiffusers;
    }
    out.push_back(keys);
  }
  return out;
}

bool has_guidance_embedder(const std::vector<std::string>& transformer_keys) {
  for (const auto& key : transformer_keys) {
    if (key.find("guidance_in.") != std::string::npos ||
        key.find("time_text_embed.guidance_embedder.") != std::string::npos) {
      return true;
    }
  }
  return false;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace fluxbatch::models
