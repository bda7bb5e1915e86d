// What a job file says, field by field, before defaults are merged and items expanded. Both the
// JSON parser and the prompt-list reader produce this; expand_job() turns it into a JobSpec.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "job/text_util.h"

namespace fluxbatch::job::detail {

struct RawItem {
  size_t offset = kNoOffset;  // where the item starts (JSON value or prompt-list line)
  std::string label;          // "items[3]" in JSON; "line 4" in prompt lists
  bool valid = true;          // false when any of its fields had a problem
  std::string prompt;
  std::optional<std::string> name;  // per-item name template
  size_t name_offset = kNoOffset;
  int priority = 0;
  ParamOverrides overrides;
};

struct RawJob {
  bool prompt_list = false;
  bool settings_valid = true;  // model/output/defaults had no problem
  std::optional<std::string> model;
  std::optional<std::string> cache;   // "cache": the cache directory
  std::optional<std::string> config;  // "config": a settings preset's name or file
  std::optional<std::string> output_dir;
  std::optional<std::string> name_template;
  size_t name_template_offset = kNoOffset;
  ParamOverrides defaults;
  size_t items_offset = kNoOffset;
  std::vector<RawItem> items;
};

}  // namespace fluxbatch::job::detail
