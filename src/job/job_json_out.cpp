// Render items and whole jobs as JSON, for PNG metadata, the manifest and `validate --json`.
#include <nlohmann/json.hpp>

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job {
namespace {

using nlohmann::ordered_json;

ordered_json item_object(const RenderItem& item) {
  ordered_json object;
  object["index"] = item.index;
  object["item"] = item.item_index;
  object["copy"] = item.copy;
  object["priority"] = item.priority;
  object["name"] = item.name;
  object["prompt"] = item.prompt;
  object["width"] = item.params.width;
  object["height"] = item.params.height;
  object["steps"] = item.params.steps;
  object["guidance"] = item.params.guidance;
  object["seed"] = item.params.seed;
  object["seed_drawn"] = item.seed_drawn;
  object["count"] = item.params.count;
  object["max_sequence_length"] = item.params.max_sequence_length;
  // Only when there are any: the items of jobs without LoRAs keep the text earlier versions wrote
  // (resume compares a PNG's own "fluxbatch" chunk with it).
  if (!item.params.loras.empty()) {
    ordered_json loras = ordered_json::array();
    for (const LoraRef& lora : item.params.loras) {
      ordered_json entry;
      entry["path"] = lora.path;
      entry["scale"] = lora.scale;
      if (!lora.sha256.empty()) entry["sha256"] = lora.sha256;
      loras.push_back(std::move(entry));
    }
    object["loras"] = std::move(loras);
  }
  object["file"] = item.file;
  object["location"] = item.location;
  return object;
}

std::string dump(const ordered_json& value, int indent) {
  return value.dump(indent, ' ', false, ordered_json::error_handler_t::replace);
}

}  // namespace

std::string item_to_json(const RenderItem& item) { return dump(item_object(item), -1); }

std::string job_items_to_json(const JobSpec& spec, int indent) {
  ordered_json job;
  job["path"] = spec.path;
  job["model"] = spec.model ? ordered_json(*spec.model) : ordered_json(nullptr);
  if (spec.config) job["config"] = *spec.config;
  if (spec.cache) job["cache"] = *spec.cache;
  job["output_dir"] = spec.output_dir;
  job["name_template"] = spec.name_template;
  job["count"] = spec.items.size();
  ordered_json items = ordered_json::array();
  for (const auto& item : spec.items) items.push_back(item_object(item));
  job["items"] = std::move(items);
  return dump(job, indent);
}

}  // namespace fluxbatch::job
