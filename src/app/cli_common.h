// Options shared by several subcommands: logging level and the render-parameter defaults that
// apply to plain prompt lists (.txt) and fill what a JSON job leaves unset.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::app {

struct GlobalOptions {
  bool verbose = false;
  bool quiet = false;
};
void add_global_options(CLI::App& app, GlobalOptions& options);
void apply_log_level(const GlobalOptions& options);

// Values as typed; CLI::Option pointers tell which were given.
struct JobOptions {
  int width = 0, height = 0, steps = 0, count = 0, max_sequence_length = 0;
  double guidance = 0.0;
  std::string seed;  // integer or "random"
  std::string out;
  std::string name;
  std::vector<std::string> loras;  // --lora PATH[:SCALE], repeatable
  CLI::Option *width_opt = nullptr, *height_opt = nullptr, *steps_opt = nullptr, *count_opt = nullptr,
              *msl_opt = nullptr, *guidance_opt = nullptr, *seed_opt = nullptr, *out_opt = nullptr,
              *name_opt = nullptr, *lora_opt = nullptr;
};
void add_job_options(CLI::App& command, JobOptions& options);
// The LoadOptions for job::load_job; InputError for a malformed --seed.
job::LoadOptions to_load_options(const JobOptions& options);

// --quantize {none,nf4}: quantize the transformer and T5 to bitsandbytes NF4 while loading.
void add_quantize_option(CLI::App& command, std::string& quantize);

}  // namespace fluxbatch::app
