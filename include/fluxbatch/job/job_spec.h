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
// LoRA multipliers: 1 is the strength a LoRA was trained at; negative values push away from it
// ("slider" LoRAs). Past +-10 images are noise in practice, so such a value is taken as a typo.
inline constexpr double kMinLoraScale = -10.0;
inline constexpr double kMaxLoraScale = 10.0;
inline constexpr int kMaxLorasPerImage = 16;

// One LoRA applied to an image: "loras": [{"path": "styles/ink.safetensors", "scale": 0.8}].
struct LoraRef {
  std::string path;        // resolved against the job file's directory (command line: as given)
  double scale = 1.0;      // the LoRA's multiplier, kMinLoraScale .. kMaxLoraScale
  bool strict = true;      // false: keys that match no module of the model are ignored, not errors
  std::string location;    // "jobs/night.json:14:12" of the entry (empty for --lora), for messages
  std::string field;       // "items[3].loras[0]", "defaults.loras[1]" or "--lora"
  // Filled by the application after validation (runtime::LoraCatalog), recorded in PNGs and the
  // manifest: the file's SHA-256, and A1111's short hash (sha256 of the tensor data, 12 hex digits).
  std::string sha256;
  std::string short_hash;

  // The name in A1111's <lora:NAME:SCALE>: the file name without its extension.
  std::string name() const;
  // Same file (path and, when both are known, content) and scale: the same pixels.
  bool same_as(const LoraRef& other) const;
};

// Per-image settings. Every field is resolved (defaults applied) after expansion.
struct RenderParams {
  int width = 1024;
  int height = 1024;
  int steps = 28;
  double guidance = 3.5;
  uint64_t seed = kDefaultSeed;
  int count = 1;
  int max_sequence_length = 512;
  std::vector<LoraRef> loras;  // applied in this order; empty: none
};

// Fields of RenderParams that are set explicitly somewhere (CLI, job defaults, item).
struct ParamOverrides {
  std::optional<int> width, height, steps, count, max_sequence_length;
  std::optional<double> guidance;
  std::optional<uint64_t> seed;
  bool random_seed = false;  // "seed": "random": drawn once at expansion and recorded
  // "loras": replaces the lower layer's list as a whole ([] removes every LoRA).
  std::optional<std::vector<LoraRef>> loras;
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
