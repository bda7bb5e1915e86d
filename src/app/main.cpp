// fluxbatch entry point: parse the command line, run one subcommand, map the outcome to the
// documented exit code (exit_codes.h). The only place that catches fluxbatch::Error.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "cli_common.h"
#include "cli_inspect.h"
#include "cli_plan.h"
#include "cli_probe.h"
#include "cli_quantize.h"
#include "cli_render.h"
#include "cli_validate.h"
#include "exit_codes.h"
#include "render_progress.h"
#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "fluxbatch/runtime/memory/memory_allocator.h"

namespace {

using namespace fluxbatch;

constexpr const char* kFooter =
    "Examples:\n"
    "  fluxbatch validate jobs/night.json            check a job file, list every problem\n"
    "  fluxbatch render jobs/night.json --dry-run    show what would be rendered or skipped\n"
    "  fluxbatch render jobs/night.json --model models/FLUX.1-dev\n"
    "  fluxbatch inspect models/FLUX.1-dev           what a model folder or file holds\n"
    "  fluxbatch plan jobs/night.json --model models/FLUX.1-dev --vram-budget 22G\n"
    "  fluxbatch probe                               memory of every CUDA device\n"
    "  fluxbatch quantize models/FLUX.1-dev models/FLUX.1-dev-nf4   bitsandbytes NF4 copy\n"
    "  fluxbatch quantize models/FLUX.1-dev flux1-dev-fp8-scaled.safetensors --to fp8   scaled-fp8 file\n"
    "  fluxbatch render --help                       all render options\n";

bool g_verbose = false;  // -v: errors keep libtorch's C++ backtrace

// One line per error, "fluxbatch: <kind><message>"; the C++ backtrace of a libtorch error only with -v.
int report(const char* kind, const std::exception& e, int code) {
  std::fprintf(stderr, "fluxbatch: %s%s\n", kind, runtime::user_message(e, g_verbose).c_str());
  return code;
}

template <class Fn>
int run_mapped(Fn&& fn) {
  try {
    return fn();
  } catch (const InputError& e) {
    return report("error: ", e, app::kExitInvalidInput);
  } catch (const ModelError& e) {
    return report("model error: ", e, app::kExitModelOrDevice);
  } catch (const DeviceError& e) {
    return report("device error: ", e, app::kExitModelOrDevice);
  } catch (const OutputError& e) {
    return report("output error: ", e, app::kExitModelOrDevice);
  } catch (const std::bad_alloc& e) {
    return report("out of memory: ", e, app::kExitModelOrDevice);
  } catch (const std::exception& e) {
    // Torch and CUDA report through their own exception types.
    return report("error: ", e, app::kExitModelOrDevice);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // First, before anything initialises CUDA: the caching allocator's settings (expandable segments
  // unless the user set PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF).
  const runtime::AllocatorSetup allocator = runtime::configure_allocator();
  CLI::App cli("fluxbatch " FLUXBATCH_VERSION ": batch renderer for FLUX.1 text-to-image models", "fluxbatch");
  cli.set_version_flag("--version", std::string("fluxbatch ") + FLUXBATCH_VERSION, "Print the version and exit");
  cli.fallthrough();  // global options also work after the subcommand
  cli.require_subcommand(1);
  cli.footer(std::string(kFooter) + "\n" + app::kExitCodesHelp);
  app::GlobalOptions global;
  app::add_global_options(cli, global);
  app::ValidateCommand validate;
  CLI::App* validate_cmd = app::add_validate_command(cli, validate);
  app::RenderCommand render;
  render.argv.assign(argv, argv + argc);  // a --devices parent starts this command again per worker
  CLI::App* render_cmd = app::add_render_command(cli, render);
  app::InspectCommand inspect;
  CLI::App* inspect_cmd = app::add_inspect_command(cli, inspect);
  app::PlanCommand plan;
  CLI::App* plan_cmd = app::add_plan_command(cli, plan);
  app::ProbeCommand probe;
  CLI::App* probe_cmd = app::add_probe_command(cli, probe);
  app::QuantizeCommand quantize;
  CLI::App* quantize_cmd = app::add_quantize_command(cli, quantize);

  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = cli.exit(e);  // prints help, the version, or the message
    return code == 0 ? app::kExitOk : app::kExitInvalidInput;
  }
  app::apply_log_level(global);
  g_verbose = global.verbose;
  log::set_color(app::use_color());  // a terminal, and no NO_COLOR
  log::debug("allocator: " + allocator.describe());

  return run_mapped([&]() -> int {
    if (validate_cmd->parsed()) {
      app::run_validate(validate);
      return app::kExitOk;
    }
    if (render_cmd->parsed()) {
      const auto summary = app::run_render(render);
      return summary ? app::exit_code_for(*summary) : app::kExitOk;
    }
    if (inspect_cmd->parsed()) {
      app::run_inspect(inspect);
      return app::kExitOk;
    }
    if (plan_cmd->parsed()) {
      app::run_plan(plan);
      return app::kExitOk;
    }
    if (probe_cmd->parsed()) {
      app::run_probe(probe);
      return app::kExitOk;
    }
    if (quantize_cmd->parsed()) {
      app::run_quantize(quantize);
      return app::kExitOk;
    }
    return app::kExitInvalidInput;
  });
}
