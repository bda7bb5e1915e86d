#include "fluxbatch/runtime/model_io/consistency.h"

#include <cstdio>
#include <filesystem>
#include <optional>

#include "fluxbatch/core/error.h"
#include "fluxbatch/models/checkpoint_keys.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;
using models::ShapeMap;

// `path` relative to the model's folder when it lies inside it: messages stay one readable line.
std::string shown(const std::string& path, const ModelFiles& model) {
  std::error_code ec;
  fs::path root(model.root);
  if (fs::is_regular_file(root, ec)) root = root.parent_path();
  const fs::path relative = fs::path(path).lexically_relative(root);
  if (relative.empty() || relative.native().rfind("..", 0) == 0) return path;
  return relative.string();
}

std::string weights_of(const ComponentFiles& files, const ModelFiles& model) {
  std::string out = files.files.empty() ? std::string("?") : shown(files.files.front(), model);
  if (!files.prefix.empty()) out += " [" + files.prefix + "]";
  return out;
}

// The config file when the layout has one, else the weights it was detected from.
std::string config_of(const ComponentFiles& files, const ModelFiles& model) {
  return files.config_path.empty() ? weights_of(files, model) : shown(files.config_path, model);
}

struct Dims {
  std::string key;  // the tensor they come from
  std::vector<int64_t> shape;
};

std::optional<Dims> tensor(const ShapeMap& shapes, std::initializer_list<const char*> keys, size_t rank) {
  for (const char* key : keys) {
    const auto it = shapes.find(key);
    if (it != shapes.end() && it->second.size() == rank) return Dims{key, it->second};
  }
  return std::nullopt;
}

[[noreturn]] void mismatch(const ModelFiles& model, const std::string& what, const std::string& advice) {
  throw ModelError(model.root + ": " + what + ": " + advice);
}

// Tokenizer ids against the embedding rows of its text encoder.
void check_vocabulary(const ModelFiles& model, const ComponentFiles& encoder, const ShapeMap& shapes,
                      std::initializer_list<const char*> embedding_keys, int64_t config_rows, int64_t id_limit,
                      const std::string& tokenizer_file, const char* tokenizer_name, const char* encoder_name,
                      const char* folder) {
  const auto embedding = tensor(shapes, embedding_keys, 2);
  const int64_t rows = embedding ? embedding->shape[0] : config_rows;
  if (id_limit <= rows) return;
  const std::string table = embedding ? " (" + embedding->key + " " + models::shape_text(embedding->shape) + ")"
                                      : " (vocab_size in " + config_of(encoder, model) + ")";
  mismatch(model,
           std::string("the ") + tokenizer_name + " and the " + encoder_name + " come from different models: " +
               shown(tokenizer_file, model) + " has token ids up to " + std::to_string(id_limit - 1) + " but " +
               weights_of(encoder, model) + " has an embedding table of " + std::to_string(rows) + " rows" + table,
           std::string("use the ") + folder + "/ folder that came with this " + encoder_name);
}

// A config.json value that its own weights contradict.
void check_config(const ModelFiles& model, const ComponentFiles& files, const std::string& field, int64_t config_value,
                  const std::optional<Dims>& dims, size_t axis) {
  if (files.config_path.empty() || !dims || dims->shape[axis] == config_value) return;
  mismatch(model,
           shown(files.config_path, model) + " says " + field + " " + std::to_string(config_value) + " but " +
               weights_of(files, model) + " has " + dims->key + " " + models::shape_text(dims->shape),
           "the config and the weights come from different models; put the config.json that came with these "
           "weights beside them");
}

}  // namespace

void check_components(const ModelFiles& model, const tokenizers::ClipTokenizer& clip_tokenizer,
                      const tokenizers::T5Tokenizer& t5_tokenizer) {
  const ShapeMap t5_shapes = component_shapes(model.text_encoder_2);
  const ShapeMap clip_shapes = component_shapes(model.text_encoder);
  const ShapeMap vae_shapes = component_shapes(model.vae);
  const models::t5::T5Config t5 = text_encoder_2_config(model);
  const models::clip::ClipTextConfig clip = text_encoder_config(model);
  const models::vae::VaeConfig vae = vae_config(model);
  const models::flux::FluxConfig flux = transformer_config(model);

  // Each component against its own config first: the numbers below come from the weights.
  const auto t5_embedding = tensor(t5_shapes, {"shared.weight", "encoder.embed_tokens.weight"}, 2);
  check_config(model, model.text_encoder_2, "vocab_size", t5.vocab_size, t5_embedding, 0);
  check_config(model, model.text_encoder_2, "d_model", t5.d_model, t5_embedding, 1);
  const auto clip_embedding = tensor(
      clip_shapes, {"text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"}, 2);
  check_config(model, model.text_encoder, "vocab_size", clip.vocab_size, clip_embedding, 0);
  check_config(model, model.text_encoder, "hidden_size", clip.hidden_size, clip_embedding, 1);
  const auto vae_conv_in = tensor(vae_shapes, {"decoder.conv_in.weight"}, 4);
  check_config(model, model.vae, "latent_channels", vae.latent_channels, vae_conv_in, 1);
  // The transformer's shapes say what it really is (detection reads dense and NF4-packed weights alike);
  // a file too damaged to tell is left to the loader, which names the tensor.
  std::optional<models::flux::FluxConfig> detected;
  try {
    detected = models::detect_flux_config(component_shapes(model.transformer));
  } catch (const ModelError&) {
  }
  if (detected && !model.transformer.config_path.empty()) {
    const auto& t = model.transformer;
    const auto flux_field = [&](const char* field, int64_t config_value, int64_t weights_value) {
      if (config_value == weights_value) return;
      mismatch(model,
               shown(t.config_path, model) + " says " + field + " " + std::to_string(config_value) + " but " +
                   weights_of(t, model) + " has " + std::to_string(weights_value),
               "the config and the weights come from different models; put the config.json that came with these "
               "weights beside them");
    };
    flux_field("in_channels", flux.in_channels, detected->in_channels);
    flux_field("joint_attention_dim", flux.joint_attention_dim, detected->joint_attention_dim);
    flux_field("pooled_projection_dim", flux.pooled_projection_dim, detected->pooled_projection_dim);
    if (flux.guidance_embeds != detected->guidance_embeds) {
      mismatch(model,
               shown(t.config_path, model) + " says guidance_embeds " + (flux.guidance_embeds ? "true" : "false") +
                   " (FLUX.1-" + (flux.guidance_embeds ? "dev" : "schnell") + ") but " + weights_of(t, model) +
                   (detected->guidance_embeds ? " has a guidance embedder (FLUX.1-dev)"
                                              : " has no guidance embedder (FLUX.1-schnell)"),
               "the config and the weights come from different models; put the config.json that came with these "
               "weights beside them");
    }
  }
  const models::flux::FluxConfig& transformer = detected ? *detected : flux;
  const std::string transformer_says = config_of(model.transformer, model);

  const int64_t t5_width = t5_embedding ? t5_embedding->shape[1] : t5.d_model;
  if (t5_width != transformer.joint_attention_dim) {
    mismatch(model,
             "the T5 text encoder and the transformer come from different models: " +
                 weights_of(model.text_encoder_2, model) + " is " + std::to_string(t5_width) + " wide (d_model) but " +
                 transformer_says + " expects joint_attention_dim " + std::to_string(transformer.joint_attention_dim),
             "use the T5 encoder that belongs to this transformer (FLUX.1 uses T5-XXL, 4096 wide)");
  }
  const int64_t clip_width = clip_embedding ? clip_embedding->shape[1] : clip.hidden_size;
  if (clip_width != transformer.pooled_projection_dim) {
    mismatch(model,
             "the CLIP text encoder and the transformer come from different models: " +
                 weights_of(model.text_encoder, model) + " pools " + std::to_string(clip_width) +
                 " features (hidden_size) but " + transformer_says + " expects pooled_projection_dim " +
                 std::to_string(transformer.pooled_projection_dim),
             "use the CLIP encoder that belongs to this transformer (FLUX.1 uses CLIP-L, 768 wide)");
  }
  const int64_t latent_channels = vae_conv_in ? vae_conv_in->shape[1] : vae.latent_channels;
  if (latent_channels > (int64_t{1} << 40) || latent_channels * 4 != transformer.in_channels) {
    mismatch(model,
             "the VAE and the transformer come from different models: " + weights_of(model.vae, model) + " has " +
                 std::to_string(latent_channels) + " latent channels (x4 packed) but " + transformer_says + " expects in_channels " + std::to_string(transformer.in_channels),
             "use the VAE that belongs to this transformer (FLUX.1's ae.safetensors, 16 latent channels)");
  }
  // The pipeline always feeds CLIP 77 positions (diffusers' tokenizer_max_length).
  const auto positions = tensor(
      clip_shapes, {"text_model.embeddings.position_embedding.weight", "embeddings.position_embedding.weight"}, 2);
  const int64_t clip_positions = positions ? positions->shape[0] : clip.max_position_embeddings;
  const auto clip_tokens = static_cast<int64_t>(tokenizers::ClipTokenizer::kDefaultMaxLength);
  if (clip_positions < clip_tokens) {
    mismatch(model,
             weights_of(model.text_encoder, model) + " has " + std::to_string(clip_positions) +
                 " position embeddings but FLUX encodes " + std::to_string(clip_tokens) + " CLIP tokens",
             "use the CLIP-L text encoder that belongs to this transformer");
  }
  // Last: a vocabulary mismatch is the least specific sign of mixed components.
  check_vocabulary(model, model.text_encoder_2, t5_shapes, {"shared.weight", "encoder.embed_tokens.weight"},
                   t5.vocab_size, t5_tokenizer.vocab_size(), t5_tokenizer.source().string(), "T5 tokenizer",
                   "T5 text encoder", "tokenizer_2");
  check_vocabulary(model, model.text_encoder, clip_shapes,
                   {"text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"},
                   clip.vocab_size, clip_tokenizer.id_limit(), clip_tokenizer.source().string(), "CLIP tokenizer",
                   "CLIP text encoder", "tokenizer");
}

void check_guidance(const ModelFiles& model, FluxVariant variant, const std::vector<const job::RenderItem*>& items) {
  if (variant == FluxVariant::kDev) return;
  for (const job::RenderItem* item : items) {
    if (item->guidance_set_by.empty()) continue;
    char value[32];
    std::snprintf(value, sizeof value, "%g", item->params.guidance);
    throw ModelError(item->location + ": guidance " + value + " (set by " + item->guidance_set_by + ") but the model " +
                     model.root + " is FLUX.1-schnell (" + weights_of(model.transformer, model) +
                     " has no guidance embedder), which has no guidance input: remove \"guidance\" from the job (or "
                     "--guidance), or render with a FLUX.1-dev model");
  }
}

}  // namespace fluxbatch::runtime
