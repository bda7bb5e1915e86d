// Shared option wiring (CLI11) and its translation into plain structs.
#include "cli_common.h"

#include <cerrno>
#include <cstdlib>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"

namespace fluxbatch::app {
namespace {

uint64_t parse_seed(const std::string& text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    throw InputError("--seed: expected an integer from 0 to 18446744073709551615 or \"random\", got '" + text + "'");
  }
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE) throw InputError("--seed: " + text + " is larger than 18446744073709551615");
  return static_cast<uint64_t>(v);
}

// "PATH" or "PATH:SCALE" (a path may itself contain ':', so only a number after the last one is a scale).
job::LoraRef parse_lora(const std::string& text) {
  job::LoraRef lora;
  lora.path = text;
  lora.field = "--lora";
  const size_t colon = text.rfind(':');
  if (colon != std::string::npos && colon + 1 < text.size()) {
    const std::string scale = text.substr(colon + 1);
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(scale.c_str(), &end);
    if (end == scale.c_str() + scale.size() && errno == 0 &&
        scale.find_first_not_of("0123456789.+-eE") == std::string::npos) {
      lora.path = text.substr(0, colon);
      lora.scale = value;
    }
  }
  return lora;
}

}  // namespace

void add_global_options(CLI::App& app, GlobalOptions& options) {
  auto* verbose = app.add_flag("-v,--verbose", options.verbose, "Log details (timings, batches, resume decisions)");
  auto* quiet = app.add_flag("-q,--quiet", options.quiet, "Log only warnings and errors");
  verbose->excludes(quiet);
}

void apply_log_level(const GlobalOptions& options) {
  if (options.verbose) log::set_level(log::Level::kDebug);
  if (options.quiet) log::set_level(log::Level::kWarn);
}

void add_job_options(CLI::App& command, JobOptions& o) {
  const std::string group = "Defaults for prompt lists and unset job fields";
  o.width_opt = command.add_option("--width", o.width, "Image width in pixels, a multiple of 16 (default 1024)")
                    ->check(CLI::Range(job::kMinSide, job::kMaxSide))
                    ->type_name("PX")
                    ->group(group);
  o.height_opt = command.add_option("--height", o.height, "Image height in pixels, a multiple of 16 (default 1024)")
                     ->check(CLI::Range(job::kMinSide, job::kMaxSide))
                     ->type_name("PX")
                     ->group(group);
  o.steps_opt = command.add_option("--steps", o.steps, "Denoising steps (default 28)")
                    ->check(CLI::Range(1, job::kMaxSteps))
                    ->type_name("N")
                    ->group(group);
  o.guidance_opt = command.add_option("--guidance", o.guidance, "Distilled guidance scale of FLUX.1-dev (default 3.5)")
                       ->check(CLI::Range(0.0, job::kMaxGuidance))
                       ->type_name("G")
                       ->group(group);
  o.seed_opt = command.add_option("--seed", o.seed, "Base seed, or \"random\" (drawn once, recorded) (default 0)")
                   ->type_name("N|random")
                   ->group(group);
  o.count_opt = command.add_option("--count", o.count, "Images per prompt; copy k uses seed + k (default 1)")
                    ->check(CLI::Range(1, job::kMaxCount))
                    ->type_name("N")
                    ->group(group);
  o.msl_opt = command.add_option("--max-sequence-length", o.max_sequence_length, "T5 prompt tokens (default 512)")
                  ->check(CLI::Range(1, job::kMaxSequenceLength))
                  ->type_name("N")
                  ->group(group);
  o.out_opt = command.add_option("-o,--out", o.out, "Output directory (overrides the job's output.dir)")
                  ->type_name("DIR");
  o.name_opt = command.add_option("--name", o.name,
                                  std::string("File name template, overrides the job's output.name (default \"") +
                                      job::kDefaultNameTemplate + "\")")
                   ->type_name("TEMPLATE");
  o.lora_opt = command
                   .add_option("--lora", o.loras,
                               "A LoRA for every image whose job entry sets no \"loras\" (repeatable; SCALE defaults "
                               "to 1, range -10..10): diffusers/PEFT, Kohya/ComfyUI or XLabs .safetensors")
                   ->type_name("PATH[:SCALE]")
                   ->group("Defaults for prompt lists and unset job fields");
}

void add_quantize_option(CLI::App& command, std::string& quantize) {
  command
      .add_option("--quantize", quantize,
                  "nf4: quantize the transformer and T5 (all Linears but T5's wo) to bitsandbytes NF4 while "
                  "loading, tensor by tensor, as diffusers/transformers BitsAndBytesConfig(load_in_4bit, nf4) do; "
                  "an NF4 checkpoint is used as stored either way (default none)")
      ->check(CLI::IsMember({"none", "nf4"}))
      ->type_name("none|nf4");
}

job::LoadOptions to_load_options(const JobOptions& o) {
  job::LoadOptions load;
  job::ParamOverrides& d = load.cli_defaults;
  if (*o.width_opt) d.width = o.width;
  if (*o.height_opt) d.height = o.height;
  if (*o.steps_opt) d.steps = o.steps;
  if (*o.count_opt) d.count = o.count;
  if (*o.msl_opt) d.max_sequence_length = o.max_sequence_length;
  if (*o.guidance_opt) d.guidance = o.guidance;
  if (*o.seed_opt) {
    if (o.seed == "random") {
      d.random_seed = true;
    } else {
      d.seed = parse_seed(o.seed);
    }
  }
  if (o.lora_opt != nullptr && *o.lora_opt) {
    std::vector<job::LoraRef> loras;
    for (const std::string& text : o.loras) loras.push_back(parse_lora(text));
    d.loras = std::move(loras);
  }
  if (*o.out_opt) load.output_dir = o.out;
  if (*o.name_opt) load.name_template = o.name;
  return load;
}

}  // namespace fluxbatch::app
