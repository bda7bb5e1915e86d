// Where the weights of a FLUX.1 model are, in any of the layouts people download:
//   - a diffusers folder (model_index.json + transformer/ text_encoder/ text_encoder_2/ vae/
//     tokenizer/ tokenizer_2/ scheduler/, components sharded or not);
//   - BFL / ComfyUI single files (flux1-*.safetensors or any FLUX transformer file, ae.safetensors,
//     clip_l*.safetensors, t5xxl*.safetensors; tokenizer/ and tokenizer_2/ beside them), given as
//     the folder or as the transformer file;
//   - one all-in-one file (Forge / ComfyUI prefixes: model.diffusion_model., vae.,
//     text_encoders.clip_l.transformer., text_encoders.t5xxl.transformer.).
// Only safetensors headers are read here.
#pragma once
#include "fluxbatch/models/clip/config.h"
#include "fluxbatch/models/flux/config.h"
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/models/vae/config.h"
#include "fluxbatch/models/weight_map.h"
#include "fluxbatch/nn/weights.h"

#include <string>
#include <vector>

namespace fluxbatch::runtime {

enum class ModelLayout { kDiffusers, kSingleFiles, kAllInOne };
const char* layout_name(ModelLayout layout);  // "diffusers", "single-files", "all-in-one"

enum class FluxVariant { kDev, kSchnell };
const char* variant_name(FluxVariant variant);  // "dev", "schnell"

struct ComponentFiles {
  models::Component component = models::Component::kTransformer;
  // Safetensors files of the component, or one "*.safetensors.index.json" of a sharded one.
  std::vector<std::string> files;
  std::string prefix;  // key prefix inside the files ("" except in all-in-one files)
  models::KeyDialect dialect = models::KeyDialect::kDiffusers;
  std::string config_path;   // diffusers / transformers config.json; empty: detect from shapes
  std::string quantization;  // "" or "bnb-nf4" (keys ending in .absmax / quant_state.bitsandbytes__nf4)
};

struct ModelFiles {
  std::string root;  // the folder or file that was given
  ModelLayout layout = ModelLayout::kDiffusers;
  FluxVariant variant = FluxVariant::kDev;  // dev when the transformer has a guidance embedder
  ComponentFiles transformer, text_encoder, text_encoder_2, vae;
  std::string tokenizer_dir;     // CLIP BPE: vocab.json + merges.txt or tokenizer.json; empty if absent and not required
  std::string tokenizer_2_dir;   // T5: spiece.model or tokenizer.json; empty if absent and not required
  std::string scheduler_config;  // diffusers scheduler/scheduler_config.json; empty in other layouts

  const ComponentFiles& component(models::Component which) const;
};

struct LocateOptions {
  bool require_tokenizers = true;  // inspect passes false: it needs weights only
};

// Detects the layout of `path` (folder or file). ModelError saying what was expected and where
// when a component or tokenizer is missing, or when several files could be the same component.
ModelFiles locate_model(const std::string& path, const LocateOptions& options = {});

// The safetensors files of a component, shard indexes expanded.
std::vector<std::string> weight_files(const ComponentFiles& files);
// Tensor names of the component (prefix stripped) and their shapes, from headers only.
models::ShapeMap component_shapes(const ComponentFiles& files);

// The component's tensors as zero-copy CPU views, prefix stripped and, with `rename`, in the names
// the modules use (diffusers for transformer / vae, transformers for the text encoders).
nn::TensorMap read_component(const ComponentFiles& files, bool rename = true);

// Component configs: config.json when the layout has one, else detected from tensor shapes.
models::flux::FluxConfig transformer_config(const ModelFiles& model);
models::vae::VaeConfig vae_config(const ModelFiles& model);
models::clip::ClipTextConfig text_encoder_config(const ModelFiles& model);
models::t5::T5Config text_encoder_2_config(const ModelFiles& model);

}  // namespace fluxbatch::runtime
