// Settings presets: named sets of render options in JSON (configs/<name>.json, or any file), chosen
// with `render --config NAME|FILE` or a job file's "config". Checked like job files: every problem
// at once, each with file:line:col and the field; unknown keys are errors. Applying them (flags win
// over the preset, the preset over built-in defaults) is the CLI's business.
//
//   {
//     "description": "FLUX.1-dev on an 8 GiB card",
//     "render":   {"quantize": "nf4", "offload": "on", "vram_budget": "7G", "batch": "auto"},
//     "defaults": {"steps": 28, "max_sequence_length": 512}
//   }
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "fluxbatch/job/job_error.h"
#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::job {

// The "render" keys, each the long option of `fluxbatch render` with '_' for '-' (vram_budget is
// --vram-budget), in the order --print-config lists them.
const std::vector<std::string>& render_setting_keys();

struct RenderSettings {
  std::string path;         // the file read
  std::string name;         // its file name without ".json"
  std::string description;
  // "render": key -> value as text ("4", "auto", "7G", "0.95"), each checked against the option's
  // rules; a relative "cache" is resolved against the preset's directory.
  std::map<std::string, std::string> render;
  ParamOverrides defaults;  // "defaults": as a job's
};

// Parses a preset's text (`path` for messages and relative paths). JobError listing every problem.
RenderSettings parse_settings(std::string_view text, const std::string& path);
RenderSettings load_settings(const std::string& path);

// Where a preset named by `spec` is: a value with a '/' or ending in ".json" is a file (relative to
// `base`); a bare name is <dir>/<name>.json in the first of `search_dirs` that has it. InputError
// ("<what>: no preset named ...", with the places looked at and the presets found there) when none
// matches.
std::string find_settings(const std::string& spec, const std::string& base, const std::vector<std::string>& search_dirs,
                          const std::string& what);

// The problem with a size such as 512M, 1.5G or 2GiB ("" when fine): what --vram-budget accepts.
std::string size_problem(const std::string& text);

}  // namespace fluxbatch::job
