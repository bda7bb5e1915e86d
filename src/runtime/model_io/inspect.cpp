#include "fluxbatch/runtime/model_io/inspect.h"

#include "fluxbatch/core/strings.h"
#include "fluxbatch/io/safetensors.h"
#include "fluxbatch/models/clip/clip_text_model.h"
#include "fluxbatch/models/t5/t5_encoder.h"
#include "fluxbatch/models/vae/vae_decoder.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <set>
#include <sstream>

namespace fluxbatch::runtime {
namespace {

// Tensors that describe a quantization rather than hold weights.
bool is_quant_state(const std::string& name) {
  for (const char* suffix : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".scale_weight",
                             ".scale_input", "scaled_fp8"}) {  // bnb NF4; ComfyUI scaled fp8
    if (ends_with(name, suffix)) return true;
  }
  return name.find(".quant_state.") != std::string::npos;
}

bool is_float(io::DType d) {
  return d == io::DType::kF64 || d == io::DType::kF32 || d == io::DType::kF16 || d == io::DType::kBF16;
}

const char* short_dtype(io::DType d) {
  switch (d) {
    case io::DType::kF64: return "fp64";
    case io::DType::kF32: return "fp32";
    case io::DType::kF16: return "fp16";
    case io::DType::kBF16: return "bf16";
    default: return io::dtype_name(d);
  }
}

// Linear weights that --quantize nf4 converts: every 2-D weight of the transformer (FLUX has no other
// kind), and T5's except embeddings and the feed-forward `wo` (models::t5::t5_linear_is_quantized).
bool nf4_candidate(models::Component component, const std::string& name, const io::TensorEntry& t) {
  if (!is_float(t.dtype) || t.shape.size() != 2 || !ends_with(name, ".weight")) return false;
  if (component == models::Component::kTransformer) return true;
  if (component != models::Component::kTextEncoder2) return false;
  for (const char* skip : {"shared.", "embed_tokens.", "relative_attention_bias.", "decoder.", "lm_head."}) {
    if (name.find(skip) != std::string::npos) return false;
  }
  return !ends_with(name, ".wo.weight");
}

std::string format_of(const std::string& quantization, bool nested, const std::set<io::DType>& fp8) {
  if (quantization == "bnb-nf4") return nested ? "nf4-dq" : "nf4";
  if (quantization == "bnb-fp4") return "fp4";
  if (fp8.count(io::DType::kF8_E4M3)) return "fp8-e4m3";
  if (fp8.count(io::DType::kF8_E5M2)) return "fp8-e5m2";
  return "dense";
}

// What the component's loader skips (prefixes of names without the file prefix).
std::vector<std::string> skipped_prefixes(models::Component component, const std::set<std::string>& names) {
  switch (component) {
    case models::Component::kVae: return models::vae::vae_ignored_prefixes(/*use_post_quant_conv=*/true);
    case models::Component::kTextEncoder: return models::clip::clip_ignored_prefixes();
    case models::Component::kTextEncoder2: {
      std::vector<std::string> out = models::t5::t5_ignored_prefixes();
      if (names.count("shared.weight")) out.push_back("encoder.embed_tokens.");  // tied: loaded once
      return out;
    }
    default: return {};
  }
}

ComponentSummary summarize(const ComponentFiles& files) {
  ComponentSummary s;
  s.name = models::component_name(files.component);
  s.quantization = files.quantization.empty() ? "none" : files.quantization;
  s.dialect = models::dialect_name(files.dialect);
  s.prefix = files.prefix;
  s.files = files.files;
  std::vector<io::TensorEntry> entries;
  std::set<std::string> packed;  // weights that carry a quantization state
  bool nested = false;
  for (const auto& file : weight_files(files)) {
    for (auto& t : io::read_safetensors_header(file).tensors) {
      if (t.name.compare(0, files.prefix.size(), files.prefix) != 0) continue;
      if (ends_with(t.name, ".absmax")) packed.insert(t.name.substr(0, t.name.size() - 7));
      if (ends_with(t.name, ".nested_absmax")) nested = true;
      entries.push_back(std::move(t));
    }
  }
  std::set<std::string> names;
  for (const auto& t : entries) names.insert(t.name.substr(files.prefix.size()));
  const std::vector<std::string> skipped = skipped_prefixes(files.component, names);
  const auto loaded = [&](const std::string& name) {
    for (const std::string& p : skipped) {
      if (name.compare(0, p.size(), p) == 0) return false;
    }
    return true;
  };
  std::set<io::DType> dense_dtypes, fp8;
  for (const auto& t : entries) {
    const uint64_t numel = io::dtype_size(t.dtype) == 0 ? 0 : (t.end - t.begin) / io::dtype_size(t.dtype);
    ++s.tensors;
    s.bytes += t.end - t.begin;
    ++s.dtypes[io::dtype_name(t.dtype)];
    const bool fp8_weight = t.dtype == io::DType::kF8_E4M3 || t.dtype == io::DType::kF8_E5M2;
    if (is_quant_state(t.name) || packed.count(t.name) || fp8_weight) {
      s.quantized_bytes += t.end - t.begin;
      if (fp8_weight) fp8.insert(t.dtype);
    } else if (is_float(t.dtype)) {
      dense_dtypes.insert(t.dtype);
      if (s.quantization == "none" && nf4_candidate(files.component, t.name.substr(files.prefix.size()), t)) {
        s.nf4_candidate_parameters += static_cast<int64_t>(numel);
      }
    }
    if (is_quant_state(t.name)) continue;
    const int64_t count = static_cast<int64_t>(packed.count(t.name) ? numel * 2 : numel);
    s.parameters += count;
    const bool weight = is_float(t.dtype) || packed.count(t.name) || t.dtype == io::DType::kF8_E4M3 ||
                        t.dtype == io::DType::kF8_E5M2;
    if (weight && loaded(t.name.substr(files.prefix.size()))) {
      s.loaded_parameters += count;
    }
  }
  s.format = format_of(s.quantization, nested, fp8);
  if (!fp8.empty()) s.nf4_candidate_parameters = 0;
  for (io::DType d : dense_dtypes) s.dense_dtype += (s.dense_dtype.empty() ? "" : "+") + std::string(short_dtype(d));
  return s;
}

std::string human(double value, const char* const units[], int count, double step) {
  int unit = 0;
  while (value >= step && unit + 1 < count) {
    value /= step;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), unit == 0 ? "%.0f%s" : "%.2f%s", value, units[unit]);
  return buf;
}

std::string human_count(int64_t n) {
  static const char* const kUnits[] = {"", " K", " M", " B"};
  return human(static_cast<double>(n), kUnits, 4, 1000.0);
}

std::string human_bytes(uint64_t n) {
  static const char* const kUnits[] = {" B", " KiB", " MiB", " GiB", " TiB"};
  return human(static_cast<double>(n), kUnits, 5, 1024.0);
}

// "none (dense bf16)", "bnb-nf4 (nf4-dq: double-quantized absmax; 1.20 MiB packed weights + state, other
// tensors bf16)", "fp8-e4m3 (3.00 MiB of float8 weights, other tensors bf16)", "scaled-fp8 fp8-e4m3 (3.00 MiB of
// float8 weights with per-tensor scales, other tensors bf16)".
std::string describe_storage(const ComponentSummary& c) {
  if (c.format == "dense") return c.quantization + " (dense " + (c.dense_dtype.empty() ? "?" : c.dense_dtype) + ")";
  std::string out;
  if (c.format.rfind("fp8", 0) == 0) {
    // "scaled-fp8": ComfyUI's per-tensor scale_weight beside each weight; plain: a cast.
    out = (c.quantization == "scaled-fp8" ? "scaled-fp8 " : "") + c.format + " (" + human_bytes(c.quantized_bytes) +
          " of float8 weights" + (c.quantization == "scaled-fp8" ? " with per-tensor scales" : "");
  } else {
    out = c.quantization + " (" + c.format + (c.format == "nf4-dq" ? ": double-quantized absmax" : "") + "; " +
          human_bytes(c.quantized_bytes) + " packed weights + state";
  }
  if (!c.dense_dtype.empty()) out += ", other tensors " + c.dense_dtype;
  return out + ")";
}

std::string to_text(const ModelSummary& m) {
  std::ostringstream out;
  out << "model:   " << m.path << "\nlayout:  " << m.layout << "\nvariant: " << m.variant << "\n";
  for (const auto& c : m.components) {
    std::string dtypes;
    for (const auto& [dtype, n] : c.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + dtype + " x" + std::to_string(n);
    out << "\n" << c.name << ":\n"
        << "  parameters:   " << human_count(c.parameters) << " (" << c.parameters << ")\n"
        << "  size:         " << human_bytes(c.bytes) << " in " << c.tensors << " tensors (" << dtypes << ")\n"
        << "  quantization: " << describe_storage(c) << "\n"
        << "  keys:         " << c.dialect << (c.prefix.empty() ? "" : " under '" + c.prefix + "'") << "\n";
    for (const auto& f : c.files) out << "  file:         " << f << "\n";
  }
  return out.str();
}

std::string to_json(const ModelSummary& m) {
  nlohmann::ordered_json root;
  root["path"] = m.path;
  root["layout"] = m.layout;
  root["variant"] = m.variant;
  nlohmann::ordered_json components = nlohmann::ordered_json::object();
  for (const auto& c : m.components) {
    components[c.name] = {{"parameters", c.parameters}, {"bytes", c.bytes},         {"tensors", c.tensors},
                          {"dtypes", c.dtypes},         {"quantization", c.quantization},
                          {"format", c.format},         {"dense_dtype", c.dense_dtype},
                          {"quantized_bytes", c.quantized_bytes},
                          {"nf4_candidate_parameters", c.nf4_candidate_parameters},
                          {"dialect", c.dialect},       {"prefix", c.prefix},       {"files", c.files}};
  }
  root["components"] = components;
  return root.dump(2) + "\n";
}

}  // namespace

ModelSummary summarize_model(const std::string& path) {
  LocateOptions options;
  options.require_tokenizers = false;
  const ModelFiles model = locate_model(path, options);
  ModelSummary m;
  m.path = path;
  m.layout = layout_name(model.layout);
  m.variant = variant_name(model.variant);
  for (const auto* files : {&model.transformer, &model.text_encoder, &model.text_encoder_2, &model.vae}) {
    m.components.push_back(summarize(*files));
  }
  return m;
}

int64_t nf4_bytes(int64_t parameters) { return (parameters + 1) / 2 + (parameters + 63) / 64 * 4; }

int64_t loaded_bytes(const ComponentSummary& c, int dtype_size, bool quantize_nf4, bool fp8) {
  // fp8 compute: the transformer's Linear weights at 1 byte (plus a scale per row, negligible) whatever they
  // are stored as; the few outside the blocks (embedders, final projection: ~0.5%) are counted so too.
  if (fp8 && c.name == "transformer") {
    const int64_t linear = c.quantization == "none" ? c.nf4_candidate_parameters : c.parameters;
    return (c.loaded_parameters - std::min(linear, c.loaded_parameters)) * dtype_size + linear;
  }
  // bnb components load as stored; fp8 ones are counted converted (an upper bound).
  if (c.quantization != "none") return static_cast<int64_t>(c.bytes);
  if (!quantize_nf4) return c.loaded_parameters * dtype_size;
  return (c.loaded_parameters - c.nf4_candidate_parameters) * dtype_size + nf4_bytes(c.nf4_candidate_parameters);
}

std::string inspect_model(const std::string& path, bool json) {
  const ModelSummary m = summarize_model(path);
  return json ? to_json(m) : to_text(m);
}

}  // namespace fluxbatch::runtime
