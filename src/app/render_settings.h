// Settings presets for render (--config NAME|FILE, or the job file's "config"): the preset is found
// (configs/ next to the executable, ~/.config/fluxbatch/configs, $FLUXBATCH_CONFIG_PATH), its render
// options fill what no flag set, its "defaults" sit below the command line's, and --print-config
// shows every effective setting with where it came from.
#pragma once
#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/job/settings_file.h"

namespace fluxbatch::app {

struct RenderCommand;

// Where presets named without a path are looked for, in order.
std::vector<std::string> preset_dirs();

// The preset `spec` names (a name or a file relative to `base`). InputError / JobError.
job::RenderSettings load_preset(const std::string& spec, const std::string& base, const std::string& what);

struct SettingSource {
  std::string name;    // "batch", "steps", ...
  std::string value;   // as it will be used
  std::string source;  // "command line", "preset low-vram-8g", "built-in default", ...
};

// Fills the fields of `defaults` (the command line's image settings) that are unset from the preset's
// "defaults": the preset sits below the command line.
void merge_preset_defaults(job::ParamOverrides& defaults, const job::RenderSettings& preset);

// The preset's value for a render option no flag of `command` gave (`command`: the parsed subcommand).
std::optional<std::string> preset_value(const CLI::App* command, const job::RenderSettings* preset,
                                        const std::string& key);

// Sets every render option of `command` that no flag gave from `preset`; returns each option's
// effective value and source.
std::vector<SettingSource> apply_preset(RenderCommand& command, const job::RenderSettings* preset);

// The image settings new items get (those neither an item nor the job's "defaults" set come from
// `cli_defaults`, which holds the command line, the preset and the model's recommendations merged),
// with their sources.
std::vector<SettingSource> image_defaults(const job::JobSpec& spec, const job::ParamOverrides& command_line,
                                          const job::RenderSettings* preset, const job::ParamOverrides& recommended);

// The --print-config text.
std::string format_settings(const std::vector<SettingSource>& render, const std::vector<SettingSource>& images,
                            const job::RenderSettings* preset);

}  // namespace fluxbatch::app
