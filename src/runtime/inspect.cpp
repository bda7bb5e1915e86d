#include "fluxbatch/runtime/inspect.h"

#include "fluxbatch/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <set>
#include <sstream>

namespace fluxbatch::runtime {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Tensors that describe a quantization rather than hold weights.
bool is_quant_state(const std::string& name) {
  for (const char* suffix : {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"}) {
    if (ends_with(name, suffix)) return true;
  }
  return name.find(".quant_state.") != std::string::npos;
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
  for (const auto& file : weight_files(files)) {
    for (auto& t : io::read_safetensors_header(file).tensors) {
      if (t.name.compare(0, files.prefix.size(), files.prefix) != 0) continue;
      if (ends_with(t.name, ".absmax")) packed.insert(t.name.substr(0, t.name.size() - 7));
      entries.push_back(std::move(t));
    }
  }
  for (const auto& t : entries) {
    const uint64_t numel = io::dtype_size(t.dtype) == 0 ? 0 : (t.end - t.begin) / io::dtype_size(t.dtype);
    ++s.tensors;
    s.bytes += t.end - t.begin;
    ++s.dtypes[io::dtype_name(t.dtype)];
    if (is_quant_state(t.name)) continue;
    s.parameters += static_cast<int64_t>(packed.count(t.name) ? numel * 2 : numel);
  }
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

std::string to_text(const ModelSummary& m) {
  std::ostringstream out;
  out << "model:   " << m.path << "\nlayout:  " << m.layout << "\nvariant: " << m.variant << "\n";
  for (const auto& c : m.components) {
    std::string dtypes;
    for (const auto& [dtype, n] : c.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + dtype + " x" + std::to_string(n);
    out << "\n" << c.name << ":\n"
        << "  parameters:   " << human_count(c.parameters) << " (" << c.parameters << ")\n"
        << "  size:         " << human_bytes(c.bytes) << " in " << c.tensors << " tensors (" << dtypes << ")\n"
        << "  quantization: " << c.quantization << "\n"
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

std::string inspect_model(const std::string& path, bool json) {
  const ModelSummary m = summarize_model(path);
  return json ? to_json(m) : to_text(m);
}

}  // namespace fluxbatch::runtime
