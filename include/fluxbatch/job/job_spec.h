// Plain structs describing a validated, expanded job. No json types here: the parser in
// src/job/ turns files into these and everything downstream only sees them.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace fluxbatch::job {

// Documented bounds (docs/job-files.md); validation enforces them.
inline constexpr int kMinSide = 64;          // width/height, multiples of 16
inline constexpr int kMaxSide = 4096;
inline constexpr int kMaxSteps = 200;
inline constexpr double kMaxGuidance = 100.0;
inline constexpr int kMaxCount = 10000;           // copies of one item
inline constexpr int64_t kMaxRenderItems = 1000000;  // whole expanded job (a farm's night)
inline constexpr int kMaxSequenceLength = 512;    // T5 tokens
inline constexpr uint64_t kDefaultSeed = 0;

// Per-image settings. Every field is resolved (defaults applied) after expansion.
struct RenderParams {
  int width = 1024;
  int height = 1024;
  int steps = 28;
  double guidance = 3.5;
  uint64_t seed = kDefaultSeed;
  int count = 1;
  int max_sequence_length = 512;
};

// Fields of RenderParams that are set explicitly somewhere (CLI, job defaults, item).
struct ParamOverrides {
  std::optional<int> width, height, steps, count, max_sequence_length;
  std::optional<double> guidance;
  std::optional<uint64_t> seed;
  bool random_seed = false;  // "seed": "random": drawn once at expansion and recorded
};

// One image to render.
struct RenderItem {
  int64_t index = 0;        // position in the expanded job, in file order (stable id, used in names)
  int64_t item_index = 0;   // index of the source entry in `items`
  int copy = 0;             // 0 .. count-1 (seed = base seed + copy)
  int priority = 0;         // higher renders first
  std::string name;         // the item's "name" (may be empty)
  std::string prompt;
  RenderParams params;      // params.count is the item's count; params.seed already includes copy
  std::string file;         // output file name relative to JobSpec::output_dir
  std::string location;     // "jobs/night.json:14:12" of the item, for messages
  bool seed_drawn = false;  // the seed was "random": drawn once at load time, recorded here
  // Who set params.guidance: "--guidance", "\"defaults\"" (the job's) or "the item"; empty when the
  // built-in default applies (a model without guidance input may ignore that one silently).
  std::string guidance_set_by;
};

struct JobSpec {
  std::string path;                   // the job file as given
  std::optional<std::string> model;   // "model" from the file, resolved against the file's dir
  std::optional<std::string> cache;   // "cache": cache directory, resolved against the file's dir
  // "config": a settings preset, as written: a name (configs/<name>.json) or a file, which the
  // caller resolves against config_base (the job file's directory).
  std::optional<std::string> config;
  std::string config_base;
  ParamOverrides file_defaults;       // the job file's own "defaults" (empty for prompt lists)
  std::string output_dir;             // resolved against the job file's dir (CLI --out wins)
  std::string name_template;          // e.g. "{index:05}-{slug}.png"
  std::vector<RenderItem> items;      // render order: priority descending, then index ascending
};

// What the CLI contributes: overrides of the job file and defaults for plain prompt lists.
struct LoadOptions {
  ParamOverrides cli_defaults;                 // used where neither the item nor "defaults" sets a field
  std::optional<std::string> output_dir;       // --out
  std::optional<std::string> name_template;    // --name
  // Source of "random" seeds (one draw per item). Empty: std::random_device, 0 .. 2^32-1.
  // Tests and the fuzzer inject a fixed source to keep expansion reproducible.
  std::function<uint64_t()> seed_source;
};

inline constexpr const char* kDefaultNameTemplate = "{index:05}-{slug}-{seed}.png";
inline constexpr const char* kDefaultOutputDir = "out";

}  // namespace fluxbatch::job
