#include "job/json_job.h"

#include <algorithm>
#include <set>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/job/name_template.h"
#include "job/json_scan.h"
#include "job/param_rules.h"
#include "job/suggest.h"

namespace fluxbatch::job::detail {
namespace {

using nlohmann::json;

const std::vector<std::string> kRootKeys = {"model", "config", "cache", "output", "defaults", "items"};
const std::vector<std::string> kOutputKeys = {"dir", "name"};
const std::vector<std::string> kParamKeys = {"width", "height", "steps", "guidance",
                                             "seed", "count", "max_sequence_length", "loras"};
const std::vector<std::string> kLoraKeys = {"path", "scale", "strict"};
const std::vector<std::string> kItemOnlyKeys = {"prompt", "name", "priority"};

// Spellings from diffusers and other tools that people will reach for.
const std::pair<const char*, const char*> kAliases[] = {
    {"num_inference_steps", "steps"}, {"guidance_scale", "guidance"},
    {"num_images_per_prompt", "count"}, {"num_images", "count"},
    {"max_seq_len", "max_sequence_length"}, {"text", "prompt"},
    {"prompts", "items"}, {"jobs", "items"}, {"images", "items"},
    {"file", "name"}, {"filename", "name"}, {"output_dir", "dir"}, {"out", "dir"},
    {"lora", "loras"}, {"lora_weights", "loras"}, {"adapters", "loras"}, {"weight", "scale"},
    {"strength", "scale"}, {"lora_scale", "scale"}, {"file", "path"}};

bool contains(const std::vector<std::string>& keys, const std::string& key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

std::string list_keys(const std::vector<std::string>& keys) {
  std::string list;
  for (const auto& key : keys) list += (list.empty() ? "" : ", ") + key;
  return list;
}

std::string unknown_field(const std::string& key, const std::vector<std::string>& known,
                          const std::string& section) {
  for (const auto& [alias, target] : kAliases) {
    if (key == alias && contains(known, target)) {
      return "unknown field (did you mean \"" + std::string(target) + "\"?)";
    }
  }
  const std::string guess = closest_match(key, known);
  if (!guess.empty()) return "unknown field (did you mean \"" + guess + "\"?)";
  if (section != "defaults" && section != "item" && contains(kParamKeys, key)) {
    return "unknown field here; \"" + key + "\" belongs in \"defaults\" or in an item";
  }
  if (section != "item" && contains(kItemOnlyKeys, key)) {
    return "unknown field here; \"" + key + "\" belongs in an item";
  }
  if (section != "output" && contains(kOutputKeys, key)) {
    return "unknown field here; \"" + key + "\" belongs in \"output\"";
  }
  return "unknown field; known fields here: " + list_keys(known);
}

// nlohmann's "[json.exception.parse_error.101] parse error at line L, column C: syntax error while
// parsing array - unexpected string literal" as "syntax error while parsing array: unexpected ...".
std::string syntax_message(const std::string& what) {
  std::string message = what;
  const size_t column = message.find("column ");
  const size_t colon = message.find(": ", column == std::string::npos ? 0 : column);
  if (colon != std::string::npos) {
    message = message.substr(colon + 2);
  } else if (message.find("] ") != std::string::npos) {
    message = message.substr(message.find("] ") + 2);
  }
  if (message.rfind("syntax error", 0) != 0) message = "syntax error: " + message;
  const size_t dash = message.find(" - ");
  if (dash != std::string::npos) message.replace(dash, 3, ": ");
  return truncate_utf8(message, 200);
}

class JsonJobParser {
 public:
  JsonJobParser(std::string_view text, DiagnosticSink& sink) : text_(text), sink_(sink) {}

  RawJob parse() {
    json root;
    try {
      root = json::parse(text_.begin(), text_.end(), nullptr, true, /*ignore_comments=*/true);
    } catch (const json::parse_error& error) {
      const size_t offset = error.byte > 0 ? std::min<size_t>(error.byte - 1, text_.size()) : 0;
      sink_.add(offset, "", syntax_message(error.what()));
      return std::move(raw_);
    } catch (const json::exception& error) {  // e.g. a number too large for a double
      sink_.add(kNoOffset, "", syntax_message(error.what()));
      return std::move(raw_);
    }
    const size_t offset = skip_whitespace(text_, 0);
    if (!root.is_object()) {
      sink_.add(offset, "", "expected a JSON object with an \"items\" array, got " + describe(root));
      return std::move(raw_);
    }
    parse_root(root, offset);
    return std::move(raw_);
  }

 private:
  // Calls handle(member, value) for each known, non-duplicate member; reports the others.
  // Returns false when any member was reported.
  template <typename Handle>
  bool for_each_member(const json& object, size_t offset, const std::string& parent,
                       const std::vector<std::string>& known, const std::string& section,
                       Handle handle) {
    bool ok = true;
    std::set<std::string> seen;
    for (const Member& member : object_members(text_, offset)) {
      const std::string field = field_path(parent, member.key);
      if (!seen.insert(member.key).second) {
        sink_.add(member.key_offset, field, "duplicate field; each field may appear once");
        ok = false;
      } else if (!contains(known, member.key)) {
        // Past the listed problems a suggestion would never be shown: skip its cost.
        sink_.add(member.key_offset, field,
                  sink_.count() < kMaxDiagnostics ? unknown_field(member.key, known, section)
                                                  : "unknown field");
        ok = false;
      } else {
        const auto found = object.find(member.key);
        if (found == object.end()) throw std::logic_error("job scanner lost key " + member.key);
        ok = handle(member, *found, field) && ok;
      }
    }
    return ok;
  }

  // Reports a problem unless it is empty; returns whether the value was fine.
  bool check(size_t offset, const std::string& field, const std::string& problem) {
    if (problem.empty()) return true;
    sink_.add(offset, field, problem);
    return false;
  }

  static std::string path_string_problem(const json& value) {
    const std::string expectation = "expected a non-empty path string";
    if (!value.is_string()) return expectation + ", got " + describe(value);
    const auto& path = value.get_ref<const std::string&>();
    if (path.empty()) return expectation + ", got \"\"";
    for (char c : path) {
      if (static_cast<unsigned char>(c) < 0x20) return "must not contain control characters";
    }
    return "";
  }

  static std::string template_problem(const json& value) {
    if (!value.is_string()) return "expected a file-name template string, got " + describe(value);
    return name_template_error(value.get_ref<const std::string&>());
  }

  void parse_root(const json& root, size_t offset) {
    bool has_items = false;
    raw_.settings_valid = for_each_member(
        root, offset, "", kRootKeys, "root",
        [&](const Member& member, const json& value, const std::string& field) {
          if (member.key == "items") {
            has_items = true;
            parse_items(value, member.value_offset);
            return true;
          }
          if (member.key == "model" || member.key == "cache") {
            if (!check(member.value_offset, field, path_string_problem(value))) return false;
            (member.key == "model" ? raw_.model : raw_.cache) = value.get<std::string>();
            return true;
          }
          if (member.key == "config") {
            if (!check(member.value_offset, field, path_string_problem(value))) return false;
            raw_.config = value.get<std::string>();
            return true;
          }
          if (member.key == "output") return parse_output(value, member.value_offset);
          return parse_defaults(value, member.value_offset);
        });
    if (!has_items) {
      sink_.add(offset, "items", "missing; a job needs an \"items\" array of prompts");
    }
  }

  bool parse_output(const json& output, size_t offset) {
    if (!output.is_object()) {
      return check(offset, "output",
                   "expected an object with \"dir\" and/or \"name\", got " + describe(output));
    }
    return for_each_member(
        output, offset, "output", kOutputKeys, "output",
        [&](const Member& member, const json& value, const std::string& field) {
          if (member.key == "dir") {
            if (!check(member.value_offset, field, path_string_problem(value))) return false;
            raw_.output_dir = value.get<std::string>();
            return true;
          }
          if (!check(member.value_offset, field, template_problem(value))) return false;
          raw_.name_template = value.get<std::string>();
          raw_.name_template_offset = member.value_offset;
          return true;
        });
  }

  bool parse_defaults(const json& defaults, size_t offset) {
    if (!defaults.is_object()) {
      return check(offset, "defaults", "expected an object of settings, got " + describe(defaults));
    }
    return for_each_member(
        defaults, offset, "defaults", kParamKeys, "defaults",
        [&](const Member& member, const json& value, const std::string& field) {
          if (member.key == "loras") return parse_loras(value, member.value_offset, field, &raw_.defaults);
          return check(member.value_offset, field, read_param(member.key, value, &raw_.defaults));
        });
  }

  // "loras": [{"path": "...", "scale": 0.8, "strict": false}, "other.safetensors", ...]; a plain
  // string is a path at scale 1. Paths stay as written here (expand_job resolves them).
  bool parse_loras(const json& value, size_t offset, const std::string& field, ParamOverrides* out) {
    if (!value.is_array()) {
      return check(offset, field,
                   "expected an array of LoRAs ([{\"path\": \"x.safetensors\", \"scale\": 0.8}] or [] for "
                   "none), got " + describe(value));
    }
    if (value.size() > static_cast<size_t>(kMaxLorasPerImage)) {
      return check(offset, field, "has " + std::to_string(value.size()) + " LoRAs; the limit is " +
                                      std::to_string(kMaxLorasPerImage) + " per image");
    }
    const std::vector<size_t> offsets = array_elements(text_, offset);
    if (offsets.size() != value.size()) throw std::logic_error("job scanner miscounted loras");
    std::vector<LoraRef> loras;
    bool ok = true;
    for (size_t i = 0; i < value.size(); ++i) {
      const std::string entry_field = field + "[" + std::to_string(i) + "]";
      LoraRef lora;
      lora.location = sink_.location(offsets[i]);
      lora.field = entry_field;
      const json& entry = value[i];
      if (entry.is_string()) {
        if (!check(offsets[i], entry_field, path_string_problem(entry))) {
          ok = false;
          continue;
        }
        lora.path = entry.get<std::string>();
        loras.push_back(std::move(lora));
        continue;
      }
      if (!entry.is_object()) {
        ok = check(offsets[i], entry_field,
                   "expected {\"path\": \"x.safetensors\", \"scale\": 0.8} or a path string, got " +
                       describe(entry)) && ok;
        continue;
      }
      bool has_path = false;
      const bool entry_ok = for_each_member(
          entry, offsets[i], entry_field, kLoraKeys, "lora",
          [&](const Member& member, const json& v, const std::string& f) {
            if (member.key == "path") {
              has_path = true;
              if (!check(member.value_offset, f, path_string_problem(v))) return false;
              lora.path = v.get<std::string>();
              return true;
            }
            if (member.key == "scale") return check(member.value_offset, f, read_lora_scale(v, &lora.scale));
            if (!v.is_boolean()) return check(member.value_offset, f, "expected true or false, got " + describe(v));
            lora.strict = v.get<bool>();
            return true;
          });
      if (!has_path) {
        sink_.add(offsets[i], entry_field, "missing \"path\" (the LoRA's .safetensors file)");
        ok = false;
        continue;
      }
      ok = entry_ok && ok;
      if (entry_ok) loras.push_back(std::move(lora));
    }
    if (ok) out->loras = std::move(loras);
    return ok;
  }

  void parse_items(const json& items, size_t offset) {
    raw_.items_offset = offset;
    if (!items.is_array()) {
      sink_.add(offset, "items", "expected an array of prompts or objects, got " + describe(items));
      return;
    }
    if (items.empty()) {
      sink_.add(offset, "items", "the job has no items");
      return;
    }
    if (items.size() > static_cast<size_t>(kMaxRenderItems)) {
      sink_.add(offset, "items",
                "has " + std::to_string(items.size()) + " entries; the limit is " +
                    std::to_string(kMaxRenderItems));
      return;
    }
    const std::vector<size_t> offsets = array_elements(text_, offset);
    if (offsets.size() != items.size()) throw std::logic_error("job scanner miscounted items");
    raw_.items.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      RawItem item;
      item.offset = offsets[i];
      item.label = "items[" + std::to_string(i) + "]";
      parse_item(items[i], &item);
      raw_.items.push_back(std::move(item));
    }
  }

  void parse_item(const json& value, RawItem* item) {
    if (value.is_string()) {
      item->prompt = value.get<std::string>();
      const std::string problem = prompt_problem(item->prompt);
      item->valid = check(item->offset, item->label, problem.empty() ? "" : "the prompt " + problem);
      return;
    }
    if (!value.is_object()) {
      item->valid = check(item->offset, item->label,
                          "expected a prompt string or an object with \"prompt\", got " +
                              describe(value));
      return;
    }
    static const std::vector<std::string> known = [] {
      std::vector<std::string> keys = kItemOnlyKeys;
      keys.insert(keys.end(), kParamKeys.begin(), kParamKeys.end());
      return keys;
    }();
    bool has_prompt = false;
    item->valid = for_each_member(
        value, item->offset, item->label, known, "item",
        [&](const Member& member, const json& field_value, const std::string& field) {
          if (member.key == "prompt") {
            has_prompt = true;
            if (!field_value.is_string()) {
              return check(member.value_offset, field,
                           "expected a string, got " + describe(field_value));
            }
            item->prompt = field_value.get<std::string>();
            return check(member.value_offset, field, prompt_problem(item->prompt));
          }
          if (member.key == "name") {
            if (!check(member.value_offset, field, template_problem(field_value))) return false;
            item->name = field_value.get<std::string>();
            item->name_offset = member.value_offset;
            return true;
          }
          if (member.key == "priority") {
            return check(member.value_offset, field, read_priority(field_value, &item->priority));
          }
          if (member.key == "loras") {
            return parse_loras(field_value, member.value_offset, field, &item->overrides);
          }
          return check(member.value_offset, field,
                       read_param(member.key, field_value, &item->overrides));
        });
    if (!has_prompt) {
      sink_.add(item->offset, item->label, "missing \"prompt\"");
      item->valid = false;
    }
  }

  std::string_view text_;
  DiagnosticSink& sink_;
  RawJob raw_;
};

}  // namespace

RawJob parse_json_job(std::string_view text, DiagnosticSink& sink) {
  return JsonJobParser(text, sink).parse();
}

}  // namespace fluxbatch::job::detail
