#include "fluxbatch/runtime/model_io/model_files.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;
using models::Component;
using models::KeyDialect;

constexpr Component kAll[] = {Component::kTransformer, Component::kTextEncoder, Component::kTextEncoder2,
                              Component::kVae};

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// Regular files of `dir` whose names end in `suffix`, sorted.
std::vector<fs::path> files_ending(const fs::path& dir, const std::string& suffix) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (is_file(it->path()) && ends_with(it->path().filename().string(), suffix)) out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What each component is called in messages.
std::string describe(Component c) {
  switch (c) {
    case Component::kTransformer: return "FLUX transformer";
    case Component::kTextEncoder: return "CLIP-L text encoder";
    case Component::kTextEncoder2: return "T5-XXL text encoder";
    case Component::kVae: return "VAE";
  }
  return "?";
}

std::vector<std::string> tensor_names(const std::string& path) {
  std::vector<std::string> names;
  if (ends_with(path, ".index.json")) {
    for (const auto& shard : nn::shard_files(path)) {
      for (auto& t : io::read_safetensors_header(shard).tensors) names.push_back(std::move(t.name));
    }
    return names;
  }
  for (auto& t : io::read_safetensors_header(path).tensors) names.push_back(std::move(t.name));
  return names;
}

std::string quantization_of(const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (n.find("quant_state.bitsandbytes__fp4") != std::string::npos) return "bnb-fp4";
  }
  for (const auto& n : names) {
    if (ends_with(n, ".absmax") || n.find("quant_state.bitsandbytes__nf4") != std::string::npos) return "bnb-nf4";
  }
  // ComfyUI "scaled fp8" (e.g. t5xxl_fp8_e4m3fn_scaled): fp8 weights times a per-tensor scale_weight.
  // Plain fp8 / fp16 weights (Forge's T5 and CLIP) are only a storage dtype: converted on load, not listed.
  for (const auto& n : names) {
    if (n == "scaled_fp8" || ends_with(n, ".scale_weight") || ends_with(n, ".scale_input")) return "scaled-fp8";
  }
  return "";
}

// Names of the component inside its files, prefix stripped.
std::vector<std::string> component_names(const ComponentFiles& files) {
  std::vector<std::string> names;
  for (const auto& file : files.files) {
    for (auto& n : tensor_names(file)) {
      if (n.compare(0, files.prefix.size(), files.prefix) == 0) names.push_back(n.substr(files.prefix.size()));
    }
  }
  return names;
}

ComponentFiles& slot(ModelFiles* model, Component c) {
  switch (c) {
    case Component::kTransformer: return model->transformer;
    case Component::kTextEncoder: return model->text_encoder;
    case Component::kTextEncoder2: return model->text_encoder_2;
    case Component::kVae: return model->vae;
  }
  throw ModelError("unknown component");
}

void finish(ModelFiles* model) {
  const auto names = component_names(model->transformer);
  model->variant = models::has_guidance_embedder(names) ? FluxVariant::kDev : FluxVariant::kSchnell;
  for (Component c : kAll) {
    ComponentFiles& files = slot(model, c);
    files.quantization = quantization_of(c == Component::kTransformer ? names : component_names(files));
  }
}

void find_tokenizers(const fs::path& dir, const LocateOptions& options, ModelFiles* model) {
  const fs::path clip = dir / "tokenizer";
  const fs::path t5 = dir / "tokenizer_2";
  // The classic files, or the tokenizer.json that transformers >= 5 saves instead of them.
  const bool clip_ok = (is_file(clip / "vocab.json") && is_file(clip / "merges.txt")) || is_file(clip / "tokenizer.json");
  const bool t5_ok = is_file(t5 / "spiece.model") || is_file(t5 / "tokenizer.json");
  if (clip_ok) model->tokenizer_dir = clip.string();
  if (t5_ok) model->tokenizer_2_dir = t5.string();
  if (!options.require_tokenizers) return;
  if (!clip_ok) {
    throw ModelError(model->root + ": no CLIP tokenizer: expected " + clip.string() +
                     "/ with vocab.json and merges.txt, or tokenizer.json (the tokenizer/ folder of the FLUX.1 "
                     "diffusers repo)");
  }
  if (!t5_ok) {
    throw ModelError(model->root + ": no T5 tokenizer: expected " + t5.string() +
                     "/ with spiece.model or tokenizer.json (the tokenizer_2/ folder of the FLUX.1 diffusers repo)");
  }
}

// ---- diffusers folders ----------------------------------------------------------------------------

void check_model_index(const fs::path& index) {
  std::ifstream in(index);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(index.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object()) throw ModelError(index.string() + ": not a JSON object");
  auto it = root.find("_class_name");
  if (it != root.end() && it->is_string() && it->get<std::string>() != "FluxPipeline") {
    throw ModelError(index.string() + ": a " + it->get<std::string>() +
                     ", not a FluxPipeline (only FLUX.1 dev / schnell text-to-image models are supported)");
  }
}

// A link whose target is missing or loops would otherwise read as "no weights", hiding the real problem.
void refuse_dangling_link(const fs::path& path, const fs::path& root, Component c) {
  std::error_code ec;
  if (!fs::is_symlink(fs::symlink_status(path, ec))) return;
  (void)fs::status(path, ec);
  if (!ec) return;
  throw ModelError(root.string() + ": the " + describe(c) + " weights " + path.string() +
                   " are a symbolic link that does not resolve (" + ec.message() +
                   "): point it at the real file (a download interrupted, or a link to itself?)");
}

ComponentFiles diffusers_component(const fs::path& root, Component c) {
  const bool diffusers_model = c == Component::kTransformer || c == Component::kVae;
  const std::string stem = diffusers_model ? "diffusion_pytorch_model" : "model";
  const fs::path dir = root / models::component_name(c);
  ComponentFiles files;
  files.component = c;
  files.dialect = diffusers_model ? KeyDialect::kDiffusers : KeyDialect::kTransformers;
  const std::string expected = dir.string() + "/" + stem + ".safetensors (or " + stem + ".safetensors.index.json)";
  if (!is_dir(dir)) {
    throw ModelError(root.string() + ": no " + describe(c) + ": expected " + expected);
  }
  for (const fs::path& expected_file : {dir / (stem + ".safetensors"), dir / (stem + ".safetensors.index.json")}) {
    refuse_dangling_link(expected_file, root, c);
  }
  if (is_file(dir / (stem + ".safetensors"))) {
    files.files = {(dir / (stem + ".safetensors")).string()};
  } else if (is_file(dir / (stem + ".safetensors.index.json"))) {
    files.files = {(dir / (stem + ".safetensors.index.json")).string()};
  } else if (auto indexes = files_ending(dir, ".safetensors.index.json"); indexes.size() == 1) {
    files.files = {indexes[0].string()};
  } else if (auto singles = files_ending(dir, ".safetensors"); singles.size() == 1) {
    files.files = {singles[0].string()};
  } else {
    throw ModelError(root.string() + ": no " + describe(c) + " weights: expected " + expected +
                     (singles.empty() ? "" : "; found several .safetensors files and no index"));
  }
  files.config_path = (dir / "config.json").string();
  if (!is_file(files.config_path)) {
    throw ModelError(root.string() + ": the " + describe(c) + " has no config: expected " + files.config_path);
  }
  return files;
}

ModelFiles locate_diffusers(const fs::path& root, const LocateOptions& options) {
  check_model_index(root / "model_index.json");
  ModelFiles model;
  model.root = root.string();
  model.layout = ModelLayout::kDiffusers;
  model.transformer = diffusers_component(root, Component::kTransformer);
  model.text_encoder = diffusers_component(root, Component::kTextEncoder);
  model.text_encoder_2 = diffusers_component(root, Component::kTextEncoder2);
  model.vae = diffusers_component(root, Component::kVae);
  const fs::path scheduler = root / "scheduler" / "scheduler_config.json";
  if (!is_file(scheduler)) throw ModelError(root.string() + ": no scheduler: expected " + scheduler.string());
  model.scheduler_config = scheduler.string();
  find_tokenizers(root, options, &model);
  finish(&model);
  return model;
}

// ---- single files ---------------------------------------------------------------------------------

struct Candidate {
  fs::path file;
  models::ComponentKeys keys;
};

// Conventional file names, for choosing among several candidates.
bool conventional_name(Component c, const std::string& name) {
  switch (c) {
    case Component::kTransformer: return name.rfind("flux1-", 0) == 0;
    case Component::kTextEncoder: return name.rfind("clip_l", 0) == 0;
    case Component::kTextEncoder2: return name.rfind("t5xxl", 0) == 0;
    case Component::kVae: return name == "ae.safetensors";
  }
  return false;
}

std::string list_files(const std::vector<Candidate>& candidates) {
  std::string out;
  for (const auto& c : candidates) out += (out.empty() ? "" : ", ") + c.file.filename().string();
  return out;
}

// Picks one candidate: the file given, then the transformer's file, then a conventional name.
const Candidate& choose(Component c, const std::vector<Candidate>& candidates, const fs::path& given,
                        const fs::path& transformer_file, const std::string& root) {
  for (const auto& pref : {given, transformer_file}) {
    for (const auto& cand : candidates) {
      if (!pref.empty() && cand.file == pref) return cand;
    }
  }
  if (candidates.size() == 1) return candidates[0];
  std::vector<const Candidate*> named;
  for (const auto& cand : candidates) {
    if (conventional_name(c, cand.file.filename().string())) named.push_back(&cand);
  }
  if (named.size() == 1) return *named[0];
  throw ModelError(root + ": several files could be the " + describe(c) + " (" + list_files(candidates) +
                   "): keep one in the folder" +
                   (c == Component::kTransformer ? " or pass the transformer file itself" : ""));
}

std::string missing_single_file(Component c, const fs::path& dir) {
  const std::string where = " in " + dir.string();
  switch (c) {
    case Component::kTransformer:
      return "no FLUX transformer" + where + ": expected flux1-*.safetensors (BFL keys double_blocks.*) or a diffusers folder";
    case Component::kTextEncoder:
      return "no CLIP-L text encoder" + where + ": expected clip_l.safetensors (keys text_model.*)";
    case Component::kTextEncoder2:
      return "no T5-XXL text encoder" + where + ": expected t5xxl*.safetensors (keys encoder.block.*, shared.weight)";
    case Component::kVae:
      return "no VAE" + where + ": expected ae.safetensors (keys decoder.*)";
  }
  return "";
}

ModelFiles locate_single_files(const fs::path& path, const LocateOptions& options) {
  const bool given_file = is_file(path);
  const fs::path dir = given_file ? (path.has_parent_path() ? path.parent_path() : fs::path(".")) : path;
  std::vector<fs::path> files = files_ending(dir, ".safetensors");
  std::map<Component, std::vector<Candidate>> candidates;
  for (const auto& file : files) {
    for (const auto& keys : models::classify_keys(tensor_names(file.string()))) {
      candidates[keys.component].push_back({file, keys});
    }
  }
  ModelFiles model;
  model.root = path.string();
  if (candidates[Component::kTransformer].empty()) {
    throw ModelError(path.string() + ": " + (given_file ? "this file holds no FLUX transformer and neither does any "
                                                          "other .safetensors file beside it"
                                                        : missing_single_file(Component::kTransformer, dir)));
  }
  const fs::path given = given_file ? path : fs::path();
  const Candidate& transformer =
      choose(Component::kTransformer, candidates[Component::kTransformer], given, fs::path(), model.root);
  bool all_in_one = true;
  for (Component c : kAll) {
    auto& list = candidates[c];
    if (list.empty()) throw ModelError(model.root + ": " + missing_single_file(c, dir));
    const Candidate& picked = choose(c, list, given, transformer.file, model.root);
    ComponentFiles& out = slot(&model, c);
    out.component = c;
    out.files = {picked.file.string()};
    out.prefix = picked.keys.prefix;
    out.dialect = picked.keys.dialect;
    all_in_one = all_in_one && picked.file == transformer.file;
  }
  model.layout = all_in_one ? ModelLayout::kAllInOne : ModelLayout::kSingleFiles;
  find_tokenizers(dir, options, &model);
  finish(&model);
  return model;
}

}  // namespace

const char* layout_name(ModelLayout layout) {
  switch (layout) {
    case ModelLayout::kDiffusers: return "diffusers";
    case ModelLayout::kSingleFiles: return "single-files";
    case ModelLayout::kAllInOne: return "all-in-one";
  }
  return "?";
}

const char* variant_name(FluxVariant variant) { return variant == FluxVariant::kDev ? "dev" : "schnell"; }

const ComponentFiles& ModelFiles::component(Component which) const {
  return slot(const_cast<ModelFiles*>(this), which);
}

ModelFiles locate_model(const std::string& path, const LocateOptions& options) {
  const fs::path p(path);
  if (is_dir(p)) {
    if (is_file(p / "model_index.json")) return locate_diffusers(p, options);
    if (files_ending(p, ".safetensors").empty()) {
      throw ModelError(path + ": neither a diffusers folder (no model_index.json) nor a folder of single "
                              ".safetensors files (flux1-*.safetensors, ae.safetensors, clip_l.safetensors, "
                              "t5xxl*.safetensors)");
    }
    return locate_single_files(p, options);
  }
  if (is_file(p)) {
    if (!ends_with(path, ".safetensors")) {
      throw ModelError(path + ": not a .safetensors file (pickled .ckpt/.pt and .gguf checkpoints are not supported)");
    }
    return locate_single_files(p, options);
  }
  throw ModelError(path + ": no such file or folder");
}

std::vector<std::string> weight_files(const ComponentFiles& files) {
  std::vector<std::string> out;
  for (const auto& file : files.files) {
    if (ends_with(file, ".index.json")) {
      for (auto& shard : nn::shard_files(file)) out.push_back(std::move(shard));
    } else {
      out.push_back(file);
    }
  }
  return out;
}

models::ShapeMap component_shapes(const ComponentFiles& files) {
  models::ShapeMap shapes;
  for (const auto& file : weight_files(files)) {
    for (auto& t : io::read_safetensors_header(file).tensors) {
      if (t.name.compare(0, files.prefix.size(), files.prefix) == 0) {
        shapes[t.name.substr(files.prefix.size())] = std::move(t.shape);
      }
    }
  }
  return shapes;
}

namespace {

nn::TensorMap renamed(const ComponentFiles& files, const nn::TensorMap& weights) {
  switch (files.component) {
    case Component::kTransformer:
      if (files.dialect == KeyDialect::kBfl) {
        return models::flux_bfl_to_diffusers(weights, models::detect_flux_config(weights));
      } else {
        nn::TensorMap out = weights;
        models::drop_scaled_fp8_extras(out);
        return out;
      }
    case Component::kVae:
      return files.dialect == KeyDialect::kLdm ? models::vae_ldm_to_diffusers(weights) : weights;
    case Component::kTextEncoder: return models::clip_to_transformers(weights);
    case Component::kTextEncoder2: return models::t5_to_transformers(weights);
  }
  return weights;
}

}  // namespace

nn::TensorMap read_component(const ComponentFiles& files, bool rename) {
  nn::TensorMap weights = nn::read_safetensors(files.files, files.prefix);
  if (weights.empty()) {
    throw ModelError(files.files.empty() ? std::string("no files") : files.files[0] + ": no " +
                                                                         std::string(models::component_name(files.component)) +
                                                                         " tensors under prefix '" + files.prefix + "'");
  }
  if (!rename) return weights;
  try {
    return renamed(files, weights);
  } catch (const ModelError& e) {
    // The mapping names the key; say which file holds it.
    throw ModelError(files.files.front() + (files.prefix.empty() ? "" : " [" + files.prefix + "]") + ": " + e.what());
  }
}

models::flux::FluxConfig transformer_config(const ModelFiles& model) {
  const auto& files = model.transformer;
  if (!files.config_path.empty()) return models::flux::FluxConfig::from_json_file(files.config_path);
  return models::detect_flux_config(component_shapes(files));
}

models::vae::VaeConfig vae_config(const ModelFiles& model) {
  const auto& files = model.vae;
  if (!files.config_path.empty()) return models::vae::VaeConfig::from_json_file(files.config_path);
  return models::detect_vae_config(component_shapes(files));
}

models::clip::ClipTextConfig text_encoder_config(const ModelFiles& model) {
  const auto& files = model.text_encoder;
  if (!files.config_path.empty()) return models::clip::ClipTextConfig::from_json_file(files.config_path);
  return models::detect_clip_config(component_shapes(files));
}

models::t5::T5Config text_encoder_2_config(const ModelFiles& model) {
  const auto& files = model.text_encoder_2;
  if (!files.config_path.empty()) return models::t5::T5Config::from_json_file(files.config_path);
  return models::detect_t5_config(component_shapes(files));
}

}  // namespace fluxbatch::runtime
