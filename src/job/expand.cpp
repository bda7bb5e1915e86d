#include "job/expand.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <random>
#include <string_view>
#include <unordered_map>

#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/job/name_template.h"
#include "job/param_rules.h"

namespace fluxbatch::job::detail {
namespace {

namespace fs = std::filesystem;

struct ResolvedItem {
  const RawItem* raw = nullptr;
  int64_t item_index = 0;  // position in RawJob::items
  RenderParams params;
  bool random_seed = false;
  const char* guidance_set_by = "";
  const std::string* name_template = nullptr;
};

std::string resolve_against(const std::string& path, const std::string& job_path);

// Later layers win: built-in defaults < command line < "defaults" < the item. `job_path`: LoRA paths
// of the job file are relative to its directory (empty: the command line's, relative to the cwd).
void apply(const ParamOverrides& overrides, RenderParams* params, bool* random_seed,
           const std::string& job_path = "") {
  if (overrides.loras) {
    params->loras = *overrides.loras;
    if (!job_path.empty()) {
      for (LoraRef& lora : params->loras) lora.path = resolve_against(lora.path, job_path);
    }
  }
  if (overrides.width) params->width = *overrides.width;
  if (overrides.height) params->height = *overrides.height;
  if (overrides.steps) params->steps = *overrides.steps;
  if (overrides.guidance) params->guidance = *overrides.guidance;
  if (overrides.count) params->count = *overrides.count;
  if (overrides.max_sequence_length) params->max_sequence_length = *overrides.max_sequence_length;
  if (overrides.random_seed) {
    *random_seed = true;
  } else if (overrides.seed) {
    params->seed = *overrides.seed;
    *random_seed = false;
  }
}

std::string resolve_against(const std::string& path, const std::string& job_path) {
  const fs::path relative(path);
  if (relative.is_absolute()) return relative.lexically_normal().string();
  return (fs::path(job_path).parent_path() / relative).lexically_normal().string();
}

uint64_t draw_seed(const LoadOptions& options) {
  if (options.seed_source) return options.seed_source();
  std::random_device device;
  return static_cast<uint64_t>(device()) & kMaxRandomSeed;
}

class Expander {
 public:
  Expander(const RawJob& raw, const std::string& job_path, const LoadOptions& options, DiagnosticSink& sink)
      : raw_(raw), job_path_(job_path), options_(options), sink_(sink) {}

  std::vector<RenderItem> run(const std::string& global_template) {
    std::vector<ResolvedItem> resolved = resolve(global_template);
    int64_t total = 0;
    for (const auto& item : resolved) total += item.params.count;
    if (total > kMaxRenderItems) {
      sink_.add(raw_.items_offset, raw_.prompt_list ? "" : "items",
                "the job expands to " + std::to_string(total) + " images (count copies per item); " +
                    "the limit is " + std::to_string(kMaxRenderItems));
      return {};
    }
    std::vector<RenderItem> items;
    // Reserved once: owners_ keeps views of the items' file names, which must not move while it lives.
    items.reserve(static_cast<size_t>(total));
    owners_.reserve(static_cast<size_t>(total));  // no rehashing of a million names
    for (auto& item : resolved) expand(item, &items);
    owners_.clear();
    sort_by_priority(items);
    return items;
  }

  // Render order: a stable sort by priority, descending. Done on indices and applied in place, so a job
  // of a million images needs no second copy of its items; nothing to do when all share one priority.
  static void sort_by_priority(std::vector<RenderItem>& items) {
    const auto higher = [](const RenderItem& a, const RenderItem& b) { return a.priority > b.priority; };
    if (std::is_sorted(items.begin(), items.end(), higher)) return;
    std::vector<size_t> order(items.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&items](size_t a, size_t b) { return items[a].priority > items[b].priority; });
    // items[j] must become the item now at order[j]: follow each cycle of the permutation once.
    std::vector<bool> placed(items.size(), false);
    for (size_t i = 0; i < items.size(); ++i) {
      if (placed[i] || order[i] == i) continue;
      RenderItem first = std::move(items[i]);
      size_t j = i;
      for (;;) {
        placed[j] = true;
        const size_t from = order[j];
        if (from == i) {
          items[j] = std::move(first);
          break;
        }
        items[j] = std::move(items[from]);
        j = from;
      }
    }
  }

 private:
  std::string field(const RawItem& item) const { return raw_.prompt_list ? "" : item.label; }

  std::vector<ResolvedItem> resolve(const std::string& global_template) {
    std::vector<ResolvedItem> resolved;
    for (size_t i = 0; i < raw_.items.size(); ++i) {
      const RawItem& raw_item = raw_.items[i];
      if (!raw_item.valid) continue;
      ResolvedItem item;
      item.raw = &raw_item;
      item.item_index = static_cast<int64_t>(i);
      apply(options_.cli_defaults, &item.params, &item.random_seed);
      apply(raw_.defaults, &item.params, &item.random_seed, job_path_);
      apply(raw_item.overrides, &item.params, &item.random_seed, job_path_);
      if (options_.cli_defaults.guidance) item.guidance_set_by = "--guidance";
      if (raw_.defaults.guidance) item.guidance_set_by = "\"defaults\"";
      if (raw_item.overrides.guidance) item.guidance_set_by = "the item";
      item.name_template = raw_item.name ? &*raw_item.name : &global_template;
      resolved.push_back(item);
    }
    return resolved;
  }

  void expand(ResolvedItem& item, std::vector<RenderItem>* out) {
    const RawItem& raw_item = *item.raw;
    if (item.random_seed) item.params.seed = draw_seed(options_);
    const auto last_copy = static_cast<uint64_t>(item.params.count - 1);
    if (item.params.seed > std::numeric_limits<uint64_t>::max() - last_copy) {
      sink_.add(raw_item.offset, field(raw_item),
                "seed " + std::to_string(item.params.seed) + " + count - 1 is larger than the " +
                    "largest seed 18446744073709551615");
      return;
    }
    RenderItem render;
    render.item_index = item.item_index;
    render.priority = raw_item.priority;
    render.name = raw_item.name.value_or("");
    render.prompt = raw_item.prompt;
    render.location = sink_.location(raw_item.offset);
    render.seed_drawn = item.random_seed;
    render.guidance_set_by = item.guidance_set_by;
    const uint64_t base_seed = item.params.seed;
    for (int copy = 0; copy < item.params.count; ++copy) {
      render.index = next_index_++;
      render.copy = copy;
      render.params = item.params;
      render.params.seed = base_seed + static_cast<uint64_t>(copy);
      render.file = format_name(*item.name_template, render);
      out->push_back(render);
      if (!claim_file(out->back(), raw_item)) {
        out->pop_back();
        return;
      }
    }
  }

  // Records render.file as taken; reports the first collision of an item and stops its copies.
  bool claim_file(const RenderItem& render, const RawItem& raw_item) {
    const auto [owner, inserted] = owners_.emplace(std::string_view(render.file), Owner{&raw_item, render.copy});
    if (inserted) return true;
    std::string other = owner->second.item == &raw_item ? "copy " : owner->second.item->label;
    if (owner->second.item == &raw_item) {
      other += std::to_string(owner->second.copy) + " of this item (use {copy}, {seed} or " +
               "{index} in the name)";
    } else if (render.params.count > 1 || owner->second.copy > 0) {
      other += " (copy " + std::to_string(owner->second.copy) + ")";
    }
    sink_.add(raw_item.offset, field(raw_item),
              "output file \"" + render.file + "\"" +
                  (render.params.count > 1 ? " of copy " + std::to_string(render.copy) : "") +
                  " is also written by " + other);
    return false;
  }

  struct Owner {
    const RawItem* item;
    int copy;
  };

  const RawJob& raw_;
  std::string job_path_;
  const LoadOptions& options_;
  DiagnosticSink& sink_;
  int64_t next_index_ = 0;
  std::unordered_map<std::string_view, Owner> owners_;  // views of the expanded items' own names
};

}  // namespace

JobSpec expand_job(const RawJob& raw, const std::string& path, const LoadOptions& options,
                   DiagnosticSink& sink) {
  JobSpec spec;
  spec.path = path;
  if (raw.model) spec.model = resolve_against(*raw.model, path);
  if (raw.cache) spec.cache = resolve_against(*raw.cache, path);
  spec.config = raw.config;
  spec.config_base = resolve_against(".", path);
  spec.file_defaults = raw.defaults;
  if (options.output_dir) {
    spec.output_dir = *options.output_dir;
  } else {
    spec.output_dir = resolve_against(raw.output_dir.value_or(kDefaultOutputDir), path);
  }
  spec.name_template = options.name_template   ? *options.name_template
                       : raw.name_template     ? *raw.name_template
                                               : std::string(kDefaultNameTemplate);
  // Expanding on top of broken settings would only add follow-up noise to the real problems
  // (a bad --name is reported by the loader).
  if (!raw.settings_valid || !name_template_error(spec.name_template).empty()) return spec;
  spec.items = Expander(raw, path, options, sink).run(spec.name_template);
  return spec;
}

}  // namespace fluxbatch::job::detail
