#include "fluxbatch/runtime/lora/lora_catalog.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/core/sha256.h"
#include "fluxbatch/job/job_error.h"
#include "fluxbatch/models/clip/clip_text_model.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/nn/linear.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

namespace fluxbatch::runtime {
namespace {

namespace fs = std::filesystem;
using models::lora::LoraComponent;

std::string list(const std::vector<std::string>& items, size_t most = 8) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < most; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > most) out += " and " + std::to_string(items.size() - most) + " more";
  return out;
}

job::Diagnostic problem(const job::LoraRef& lora, const std::string& message) {
  job::Diagnostic d;
  d.file = lora.location;
  d.field = lora.field;
  d.message = lora.path + ": " + message;
  return d;
}

}  // namespace

LoraHashes lora_hashes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError("cannot read " + path);
  uint8_t size_bytes[8] = {};
  in.read(reinterpret_cast<char*>(size_bytes), 8);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | size_bytes[i];
  Sha256 whole, data;
  whole.update(size_bytes, static_cast<size_t>(in.gcount()));
  std::vector<char> buffer(size_t{1} << 20);
  uint64_t position = static_cast<uint64_t>(in.gcount());
  const uint64_t data_start = 8 + header;
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
    const auto n = static_cast<uint64_t>(in.gcount());
    whole.update(buffer.data(), n);
    if (position + n > data_start) {
      const uint64_t skip = position >= data_start ? 0 : data_start - position;
      data.update(buffer.data() + skip, n - skip);
    }
    position += n;
  }
  const auto w = whole.digest(), d = data.digest();
  return {to_hex(w.data(), w.size()), to_hex(d.data(), d.size()).substr(0, 12)};
}

models::lora::LinearShapes linear_shapes(const torch::nn::Module& module) {
  models::lora::LinearShapes out;
  for (const auto& item : module.named_modules()) {
    if (const auto* linear = dynamic_cast<const nn::LinearImpl*>(item.value().get())) {
      out[item.key()] = {linear->in_features(), linear->out_features()};
    }
  }
  return out;
}

models::lora::LinearShapes transformer_linear_shapes(const ModelFiles& model) {
  // The meta device allocates nothing, so this costs microseconds even for FLUX.1-dev.
  const models::flux::FluxTransformer2DModel m(transformer_config(model), at::TensorOptions().device(at::kMeta));
  return linear_shapes(*m);
}

models::lora::LinearShapes text_encoder_linear_shapes(const ModelFiles& model) {
  const models::clip::ClipTextModel m(text_encoder_config(model), at::TensorOptions().device(at::kMeta));
  return linear_shapes(*m);
}

std::shared_ptr<LoraCatalog> LoraCatalog::load(job::JobSpec& spec, const ModelFiles& model) {
  auto catalog = std::make_shared<LoraCatalog>();
  std::map<std::string, const job::LoraRef*> first_use;  // path -> where it is first given
  std::map<std::string, bool> strict;                     // path -> strict (any use asking for it)
  for (const job::RenderItem& item : spec.items) {
    for (const job::LoraRef& lora : item.params.loras) {
      first_use.emplace(lora.path, &lora);
      strict[lora.path] = strict.count(lora.path) ? strict[lora.path] && lora.strict : lora.strict;
    }
  }
  if (first_use.empty()) return catalog;
  const auto start = std::chrono::steady_clock::now();
  const c10::InferenceMode inference;
  const models::lora::LinearShapes transformer = transformer_linear_shapes(model);
  const models::lora::LinearShapes text_encoder = text_encoder_linear_shapes(model);
  const std::map<LoraComponent, const models::lora::LinearShapes*> shapes = {
      {LoraComponent::kTransformer, &transformer}, {LoraComponent::kTextEncoder, &text_encoder}};
  std::vector<job::Diagnostic> problems;
  for (const auto& [path, lora] : first_use) {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      problems.push_back(problem(*lora, "no such file"));
      continue;
    }
    if (!fs::is_regular_file(path, ec)) {
      problems.push_back(problem(*lora, "not a file"));
      continue;
    }
    LoraAdapter adapter;
    adapter.path = path;
    try {
      // The two hashes read the whole file again: on their own thread, beside the parse.
      std::future<LoraHashes> hashes = std::async(std::launch::async, lora_hashes, path);
      adapter.file = models::lora::read_lora_file(path);
      adapter.hashes = hashes.get();
    } catch (const std::exception& e) {
      std::string message = e.what();
      if (message.rfind(path + ": ", 0) == 0) message.erase(0, path.size() + 2);
      problems.push_back(problem(*lora, "not a LoRA this version reads: " + message));
      continue;
    }
    models::lora::LoraFile& file = adapter.file;
    const models::lora::LoraFit fit = models::lora::check_fit(file, shapes);
    const bool is_strict = strict[path];
    if (is_strict && !file.unknown_keys.empty()) {
      problems.push_back(problem(*lora, std::to_string(file.unknown_keys.size()) + " key(s) map onto no layer (" +
                                            models::lora::format_name(file.format) +
                                            " format): " + list(file.unknown_keys) +
                                            "; \"strict\": false ignores them"));
    }
    if (is_strict && !fit.missing_modules.empty()) {
      problems.push_back(problem(*lora, std::to_string(fit.missing_modules.size()) +
                                            " layer(s) the model does not have (a LoRA for another model?): " +
                                            list(fit.missing_modules) + "; \"strict\": false ignores them"));
    }
    for (const std::string& e : fit.shape_errors) problems.push_back(problem(*lora, e));
    if (!is_strict && (!file.unknown_keys.empty() || !fit.missing_modules.empty())) {
      log::warn(path + ": ignoring " + std::to_string(file.unknown_keys.size() + fit.missing_modules.size()) +
                " key(s) or layer(s) that map onto nothing of the model (\"strict\": false): " +
                list(file.unknown_keys.empty() ? fit.missing_modules : file.unknown_keys, 4));
      models::lora::drop_missing(file, shapes);
    }
    if (file.targets.empty() && is_strict == false) {
      problems.push_back(problem(*lora, "nothing of it applies to this model"));
      continue;
    }
    adapter.id = static_cast<int>(catalog->adapters_.size());
    catalog->by_path_[path] = adapter.id;
    catalog->adapters_.push_back(std::move(adapter));
  }
  if (!problems.empty()) throw job::JobError(problems);
  for (job::RenderItem& item : spec.items) {
    for (job::LoraRef& lora : item.params.loras) {
      const LoraAdapter& a = catalog->adapters_.at(static_cast<size_t>(catalog->by_path_.at(lora.path)));
      lora.sha256 = a.hashes.sha256;
      lora.short_hash = a.hashes.short_hash;
    }
  }
  for (const LoraAdapter& a : catalog->adapters_) {
    const std::vector<int64_t> ranks = a.file.ranks();
    std::string rank_text;
    for (int64_t r : ranks) rank_text += (rank_text.empty() ? "" : "/") + std::to_string(r);
    log::info("LoRA " + a.path + ": " + models::lora::format_name(a.file.format) + ", rank " + rank_text + ", " +
              std::to_string(a.file.targets.size()) + " layer(s)" +
              (a.file.has(LoraComponent::kTextEncoder) ? " (text encoder too)" : "") + ", sha256 " +
              a.hashes.sha256.substr(0, 12));
  }
  char line[120];
  std::snprintf(line, sizeof line, "%zu LoRA file(s) read and checked in %.2f s", catalog->adapters_.size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  log::info(line);
  return catalog;
}

nn::LoraSet LoraCatalog::set_for(const std::vector<job::LoraRef>& loras, LoraComponent component) const {
  nn::LoraSet out;
  for (const job::LoraRef& lora : loras) {
    const auto it = by_path_.find(lora.path);
    if (it == by_path_.end()) throw InputError(lora.location + " " + lora.field + ": " + lora.path + " was not read before rendering");
    if (adapters_.at(static_cast<size_t>(it->second)).file.has(component)) out.push_back({it->second, lora.scale});
  }
  return out;
}

void LoraCatalog::attach(torch::nn::Module& model, LoraComponent component, const std::set<int>& ids,
                         c10::ScalarType dtype, c10::Device device) const {
  std::map<std::string, nn::LinearImpl*> linears;
  for (const auto& item : model.named_modules()) {
    if (auto* linear = dynamic_cast<nn::LinearImpl*>(item.value().get())) linears[item.key()] = linear;
  }
  const c10::InferenceMode inference;
  for (const auto& [name, linear] : linears) {
    std::vector<int> stale;
    for (const auto& [id, factors] : linear->loras()) {
      if (!ids.count(id)) stale.push_back(id);
    }
    for (int id : stale) linear->remove_lora(id);
  }
  for (int id : ids) {
    const LoraAdapter& adapter = adapters_.at(static_cast<size_t>(id));
    // A layer holds each adapter once: several targets of one file on one layer are summed (the same
    // sum PEFT would compute as one layer cannot hold two of one adapter; no dialect writes that).
    for (const models::lora::LoraTarget& t : adapter.file.targets) {
      if (t.component != component) continue;
      const auto it = linears.find(t.module);
      if (it == linears.end()) continue;  // checked at load; a model without that layer (strict: false)
      nn::LinearImpl& linear = *it->second;
      if (linear.has_lora(id)) {
        const nn::LoraFactors& held = linear.loras().at(id);
        if (held.down.device() == device && held.down.scalar_type() == dtype) continue;  // attached before
      }
      nn::LoraFactors f;
      f.down = t.down.to(device, dtype);
      f.up = t.up.to(device, dtype);
      f.alpha_scale = t.alpha_scale;
      linear.set_lora(id, std::move(f), adapter.path + " on " + t.module);
    }
  }
}

}  // namespace fluxbatch::runtime
