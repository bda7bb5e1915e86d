#include "render_settings.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <type_traits>

#include "cli_render.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::app {
namespace {

namespace fs = std::filesystem;

std::string flag_of(const std::string& key) {
  std::string flag = "--" + key;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return flag;
}

bool given(const RenderCommand& command, const std::string& key) {
  return command.cli != nullptr && command.cli->count(flag_of(key)) > 0;
}

// The command's field for a render setting, as text, and how to set it from text.
std::string get(const RenderCommand& c, const std::string& key) {
  if (key == "device") return c.device.empty() ? "auto (cuda if available, else cpu)" : c.device;
  if (key == "dtype") return c.dtype.empty() ? "auto (bf16 on cuda, fp32 on cpu)" : c.dtype;
  if (key == "quantize") return c.quantize;
  if (key == "batch") return c.batch;
  if (key == "offload") return c.memory.offload;
  if (key == "vae_tiles") return c.memory.vae_tiles;
  if (key == "vram_budget") return c.memory.budget.empty() ? "what is free minus the reserve" : c.memory.budget;
  if (key == "vram_reserve") return c.memory.reserve;
  if (key == "monitor_interval") return std::to_string(c.memory.monitor_interval_ms);
  if (key == "monitor_threshold") {
    std::ostringstream s;
    s << c.memory.monitor_threshold;
    return s.str();
  }
  if (key == "write_threads") return std::to_string(c.write_threads);
  if (key == "progress") return c.progress.mode;
  if (key == "progress_interval") {
    std::ostringstream s;
    s << c.progress.interval_s;
    return s.str();
  }
  if (key == "cache") return c.cache.off ? "none (--no-cache)" : c.cache.dir.empty() ? "the job's \"cache\", else none" : c.cache.dir;
  if (key == "cache_max") return c.cache.max;
  return "?";
}

void set(RenderCommand& c, const std::string& key, const std::string& v) {
  if (key == "device") c.device = v;
  else if (key == "dtype") c.dtype = v;
  else if (key == "quantize") c.quantize = v;
  else if (key == "batch") c.batch = v;
  else if (key == "offload") c.memory.offload = v;
  else if (key == "vae_tiles") c.memory.vae_tiles = v;
  else if (key == "vram_budget") c.memory.budget = v;
  else if (key == "vram_reserve") c.memory.reserve = v;
  else if (key == "monitor_interval") c.memory.monitor_interval_ms = std::stoi(v);
  else if (key == "monitor_threshold") c.memory.monitor_threshold = std::stod(v);
  else if (key == "write_threads") c.write_threads = std::stoi(v);
  else if (key == "progress") c.progress.mode = v;
  else if (key == "progress_interval") c.progress.interval_s = std::stod(v);
  else if (key == "cache") c.cache.dir = v;
  else if (key == "cache_max") c.cache.max = v;
}

std::string preset_source(const job::RenderSettings& preset) { return "preset " + preset.name + " (" + preset.path + ")"; }

std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

template <typename T>
std::string text(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    return number(v);
  } else {
    return std::to_string(v);
  }
}

}  // namespace

std::vector<std::string> preset_dirs() {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("FLUXBATCH_CONFIG_PATH")) {
    std::stringstream list(path);
    for (std::string dir; std::getline(list, dir, ':');) {
      if (!dir.empty()) dirs.push_back(dir);
    }
  }
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && *xdg != '\0') {
    dirs.push_back((fs::path(xdg) / "fluxbatch" / "configs").string());
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    dirs.push_back((fs::path(home) / ".config" / "fluxbatch" / "configs").string());
  }
  // The presets shipped with fluxbatch: configs/ of the tree the executable was built in
  // (build/fluxbatch -> configs/), or share/fluxbatch/configs of an installation.
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    dirs.push_back((exe.parent_path().parent_path() / "configs").string());
    dirs.push_back((exe.parent_path().parent_path() / "share" / "fluxbatch" / "configs").string());
  }
  return dirs;
}

job::RenderSettings load_preset(const std::string& spec, const std::string& base, const std::string& what) {
  return job::load_settings(job::find_settings(spec, base, preset_dirs(), what));
}

void merge_preset_defaults(job::ParamOverrides& d, const job::RenderSettings& preset) {
  const job::ParamOverrides& p = preset.defaults;
  if (!d.width) d.width = p.width;
  if (!d.height) d.height = p.height;
  if (!d.steps) d.steps = p.steps;
  if (!d.guidance) d.guidance = p.guidance;
  if (!d.seed && !d.random_seed) d.seed = p.seed;
  if (!d.count) d.count = p.count;
  if (!d.max_sequence_length) d.max_sequence_length = p.max_sequence_length;
}

std::optional<std::string> preset_value(const CLI::App* command, const job::RenderSettings* preset,
                                        const std::string& key) {
  if (preset == nullptr || (command != nullptr && command->count(flag_of(key)) > 0)) return std::nullopt;
  const auto it = preset->render.find(key);
  if (it == preset->render.end()) return std::nullopt;
  return it->second;
}

std::vector<SettingSource> apply_preset(RenderCommand& command, const job::RenderSettings* preset) {
  std::vector<SettingSource> out;
  for (const std::string& key : job::render_setting_keys()) {
    std::string source = "built-in default";
    if (given(command, key)) {
      source = "command line (" + flag_of(key) + ")";
    } else if (preset != nullptr) {
      if (const auto it = preset->render.find(key); it != preset->render.end()) {
        set(command, key, it->second);
        source = preset_source(*preset);
      }
    }
    if (key == "cache" && source == "built-in default" && command.cache.off) source = "command line (--no-cache)";
    out.push_back({key, get(command, key), source});
  }
  return out;
}

std::vector<SettingSource> image_defaults(const job::JobSpec& spec, const job::ParamOverrides& command_line,
                                          const job::RenderSettings* preset, const job::ParamOverrides& recommended) {
  const job::RenderParams builtin;
  std::vector<SettingSource> out;
  const auto add = [&](const char* name, auto pick, const std::string& builtin_value) {
    const auto file = pick(spec.file_defaults), cli = pick(command_line);
    const auto from_preset = preset != nullptr ? pick(preset->defaults) : decltype(file){};
    const auto model = pick(recommended);
    if (file) return out.push_back({name, text(*file), "job file (\"defaults\")"});
    if (cli) return out.push_back({name, text(*cli), "command line"});
    if (from_preset) return out.push_back({name, text(*from_preset), preset_source(*preset)});
    if (model) return out.push_back({name, text(*model), "the model's recommendation"});
    out.push_back({name, builtin_value, "built-in default"});
  };
  add("width", [](const job::ParamOverrides& p) { return p.width; }, std::to_string(builtin.width));
  add("height", [](const job::ParamOverrides& p) { return p.height; }, std::to_string(builtin.height));
  add("steps", [](const job::ParamOverrides& p) { return p.steps; }, std::to_string(builtin.steps));
  add("guidance", [](const job::ParamOverrides& p) { return p.guidance; }, number(builtin.guidance));
  add("seed", [](const job::ParamOverrides& p) { return p.seed; }, std::to_string(builtin.seed));
  add("count", [](const job::ParamOverrides& p) { return p.count; }, std::to_string(builtin.count));
  add("max_sequence_length", [](const job::ParamOverrides& p) { return p.max_sequence_length; },
      std::to_string(builtin.max_sequence_length));
  if (spec.file_defaults.random_seed || command_line.random_seed) {
    for (SettingSource& s : out) {
      if (s.name == "seed") s = {"seed", "random", spec.file_defaults.random_seed ? "job file (\"defaults\")" : "command line"};
    }
  }
  return out;
}

std::string format_settings(const std::vector<SettingSource>& render, const std::vector<SettingSource>& images,
                            const job::RenderSettings* preset) {
  std::string out;
  if (preset != nullptr) {
    out += "preset: " + preset->name + " (" + preset->path + ")" +
           (preset->description.empty() ? "" : ": " + preset->description) + "\n";
  } else {
    out += "preset: none\n";
  }
  char line[512];
  out += "render settings (command line > preset > built-in default):\n";
  for (const SettingSource& s : render) {
    std::snprintf(line, sizeof line, "  %-19s %-34s %s\n", s.name.c_str(), s.value.c_str(), s.source.c_str());
    out += line;
  }
  out += "image settings where an item sets none (item > job \"defaults\" > command line > preset > model > built-in):\n";
  for (const SettingSource& s : images) {
    std::snprintf(line, sizeof line, "  %-19s %-34s %s\n", s.name.c_str(), s.value.c_str(), s.source.c_str());
    out += line;
  }
  return out;
}

}  // namespace fluxbatch::app
