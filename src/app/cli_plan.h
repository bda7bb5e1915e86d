// `fluxbatch plan JOB`: the memory plan of a job (stages, resident components, batch size and
// predicted peak per resolution group) from the model's file headers; loads no weights.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "cli_common.h"
#include "memory_options.h"
#include "speed_options.h"

namespace fluxbatch::app {

struct PlanCommand {
  std::string file;
  std::string model;        // empty: the job's "model"
  std::string device;       // empty: cuda if available, else cpu (as render)
  std::string dtype;        // empty: bf16 on cuda, fp32 on cpu (as render)
  MemoryOptions memory;     // --vram-budget, --vram-reserve
  std::string quantize = "none";  // --quantize none|nf4, as render
  SpeedOptions speed;             // --compute, --attention bf16|fp8, as render (the weights' size, calibrations)
  int max_batch = 64;
  bool json = false;
  std::string config;       // --config NAME|FILE (as render: its device, dtype, quantize and memory options)
  JobOptions job;
  CLI::App* cli = nullptr;  // the parsed subcommand: which flags were given
};

CLI::App* add_plan_command(CLI::App& app, PlanCommand& command);

// Prints the plan to stdout. InputError for a bad job or option, ModelError for a bad model.
void run_plan(const PlanCommand& command);

}  // namespace fluxbatch::app
