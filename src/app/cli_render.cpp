// render: everything is checked before the model loads; then the runner does the work.
#include "cli_render.h"

#include <cstdio>
#include <filesystem>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory_calibration.h"
#include "fluxbatch/runtime/memory_budget.h"
#include "fluxbatch/runtime/model_io/consistency.h"
#include "fluxbatch/runtime/pipeline.h"
#include "fluxbatch/runtime/flux_generator.h"
#include "interrupt.h"
#include "plan_report.h"
#include "render_memory.h"

namespace fluxbatch::app {
namespace {

constexpr const char* kFooter =
    "Examples:\n"
    "  fluxbatch render jobs/night.json --model models/FLUX.1-dev\n"
    "      render every image of the job into its output_dir, with a manifest.jsonl next to them\n"
    "  fluxbatch render prompts.txt --model models/FLUX.1-dev --out out/run1 --steps 20 --count 4 --seed 7\n"
    "      a prompt list, one prompt per line: 4 images per prompt, seeds 7..10\n"
    "  fluxbatch render jobs/night.json --dry-run\n"
    "      show what would be rendered or skipped; loads no model and writes nothing\n"
    "  fluxbatch render jobs/night.json --model models/FLUX.1-dev --device cuda:1 --dtype fp16 --batch 4\n"
    "  fluxbatch render jobs/night.json --model models/FLUX.1-dev --quantize nf4\n"
    "      transformer and T5 in NF4 (about 3.6x smaller than bf16), quantized while loading\n"
    "\n"
    "Resuming: run the same command again. An image is skipped when its PNG exists and manifest.jsonl\n"
    "records it with the same prompt, seed, size, steps, guidance, max_sequence_length and model.\n"
    "Existing images are never replaced unless --overwrite is given. Ctrl-C finishes the images in\n"
    "hand and stops (exit 130); a second Ctrl-C aborts at once.\n"
    "\n"
    "Each PNG carries a \"parameters\" text chunk in the A1111/Forge format and a \"fluxbatch\" chunk\n"
    "with the item as JSON.\n";

constexpr int kAutoBatch = 0;  // parse_batch's answer for "auto"
constexpr int kMaxAutoBatch = 64;

int parse_batch(const std::string& text) {
  if (text == "auto") return kAutoBatch;
  const bool digits = !text.empty() && text.size() <= 6 && text.find_first_not_of("0123456789") == std::string::npos;
  const int n = digits ? std::stoi(text) : 0;
  if (n < 1) throw InputError("--batch: expected auto or a positive integer, got '" + text + "'");
  return n;
}

// Device, dtype (always resolved here, so *dtype is set) and quantization from the command line.
runtime::GeneratorOptions resolve_options(const RenderCommand& command) {
  runtime::GeneratorOptions options;
  options.device = runtime::parse_device(command.device.empty() ? (runtime::cuda_available() ? "cuda" : "cpu")
                                                                : command.device);
  options.dtype = runtime::parse_dtype(command.dtype.empty() ? (options.device.is_cuda() ? "bf16" : "fp32")
                                                             : command.dtype);
  options.quantize_nf4 = command.quantize == "nf4";
  return options;
}

// The components' residency (--offload) from the weights as they will load, logged with the reason.
runtime::Residency decide_residency(const std::string& mode, c10::Device device,
                                    const std::vector<runtime::ComponentWeights>& weights, int64_t budget_bytes) {
  const runtime::Residency residency = resolve_residency(mode, device, weights, budget_bytes);
  const std::string why = " (--offload " + mode + "; transformer + VAE " +
                          runtime::format_bytes(runtime::denoise_weight_bytes(weights)) +
                          ", budget " + runtime::format_bytes(budget_bytes) + ")";
  log::info(residency == runtime::Residency::kOffload
                ? "offload: components wait in pinned host memory and visit the device for their stage" + why
                : "staged: each stage loads its components from disk; the text encoders never share the device "
                  "with the transformer and VAE" + why);
  return residency;
}

std::string model_for(const RenderCommand& command, const job::JobSpec& spec) {
  if (!command.model.empty()) return command.model;
  return spec.model.value_or("");
}

// Loads the job with the model variant's recommended settings (schnell: 4 steps, 256 T5 tokens) as the
// lowest-precedence defaults, below the job's "defaults" and the command line. The variant is read from
// file headers only. On a dry run an unreadable model keeps the built-in (dev) defaults.
job::JobSpec load_job_for_model(const RenderCommand& command) {
  job::LoadOptions options = to_load_options(command.job);
  job::JobSpec spec = job::load_job(command.file, options);
  const std::string model = model_for(command, spec);
  if (model.empty()) return spec;
  runtime::VariantDefaults recommended;
  try {
    recommended = runtime::variant_defaults(runtime::probe_variant(model));
  } catch (const ModelError&) {
    if (command.dry_run) return spec;
    throw;
  }
  const job::RenderParams builtin;
  job::ParamOverrides& cli = options.cli_defaults;
  bool changed = false;
  if (!cli.steps && recommended.steps != builtin.steps) {
    cli.steps = recommended.steps;
    changed = true;
  }
  if (!cli.max_sequence_length && recommended.max_sequence_length != builtin.max_sequence_length) {
    cli.max_sequence_length = recommended.max_sequence_length;
    changed = true;
  }
  return changed ? job::load_job(command.file, options) : spec;
}

void print_dry_run(const RenderCommand& command, const job::JobSpec& spec, const std::string& model_path,
                   const runtime::GeneratorOptions& options, int batch) {
  std::string model = model_path.empty() ? "(none given: pass --model to render)" : model_path;
  std::error_code ec;
  if (!model_path.empty() && !std::filesystem::exists(model_path, ec)) model += " (does not exist)";
  // The model is not loaded, so its description (recorded in the manifest) is not compared here.
  // --batch auto is decided after loading (calibration); `fluxbatch plan` shows its prediction.
  const runtime::JobPlan plan =
      runtime::plan_job(spec, spec.output_dir, std::nullopt, command.overwrite, batch == kAutoBatch ? 1 : batch);
  const std::string batch_text = batch == kAutoBatch ? "auto (chosen per size after loading; see fluxbatch plan)"
                                                     : std::to_string(batch);
  std::printf("model: %s\ndevice: %s, dtype %s%s, batch %s\n%s", model.c_str(), options.device.str().c_str(),
              runtime::dtype_name(*options.dtype).c_str(), options.quantize_nf4 ? ", quantize nf4" : "", batch_text.c_str(),
              format_plan(spec, spec.output_dir, plan).c_str());
  std::fflush(stdout);
}

void log_summary(const runtime::RunSummary& s) {
  log::info("done: " + std::to_string(s.rendered) + " rendered, " + std::to_string(s.skipped) + " skipped, " +
            std::to_string(s.failed) + " failed, " + std::to_string(s.blocked) + " blocked, of " +
            std::to_string(s.total) + " (" + std::to_string(static_cast<int64_t>(s.seconds)) + " s)");
  if (s.failed + s.blocked > 0) log::warn(std::to_string(s.failed + s.blocked) + " image(s) not rendered; see manifest.jsonl");
  if (s.interrupted) {
    log::warn("interrupted: " + std::to_string(s.not_started) +
              " image(s) not started; run the same command again to resume");
  }
}

}  // namespace

CLI::App* add_render_command(CLI::App& app, RenderCommand& command) {
  CLI::App* sub = app.add_subcommand("render", "Render every image of a job file or prompt list to PNG");
  sub->add_option("JOB", command.file, "Job file (.json) or prompt list (.txt, one prompt per line)")->required();
  sub->add_option("-m,--model", command.model, "FLUX.1 model: diffusers folder (dense or bitsandbytes NF4; tokenizers as vocab.json/merges.txt/spiece.model or tokenizer.json), BFL/ComfyUI single files, or an all-in-one file (incl. Forge's flux1-dev-bnb-nf4); overrides the job's \"model\"")
      ->type_name("PATH");
  sub->add_option("--device", command.device, "cuda, cuda:N or cpu (default: cuda if available, else cpu)")
      ->type_name("DEV");
  sub->add_option("--dtype", command.dtype, "bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)")
      ->type_name("T");
  sub->add_option("--batch", command.batch,
                  "Images per model call: auto (the memory plan's batch per size, calibrated on first use) or N "
                  "(default auto)")
      ->type_name("auto|N");
  add_quantize_option(*sub, command.quantize);
  add_memory_options(*sub, command.memory, /*monitor=*/true);
  sub->add_flag("--overwrite", command.overwrite, "Render every image again, replacing existing files");
  sub->add_flag("-n,--dry-run", command.dry_run, "Validate and show what would be rendered or skipped; write nothing");
  add_job_options(*sub, command.job);
  sub->footer(kFooter);
  return sub;
}

std::optional<runtime::RunSummary> run_render(const RenderCommand& command) {
  const job::JobSpec spec = load_job_for_model(command);
  const std::string model = model_for(command, spec);
  runtime::GeneratorOptions options = resolve_options(command);
  const c10::ScalarType dtype = *options.dtype;
  const int batch = parse_batch(command.batch);
  if (!command.memory.budget.empty()) runtime::parse_byte_size(command.memory.budget, "--vram-budget");
  runtime::parse_byte_size(command.memory.reserve, "--vram-reserve");
  if (command.dry_run) {
    print_dry_run(command, spec, model, options, batch);
    return std::nullopt;
  }
  if (model.empty()) {
    throw InputError(command.file + ": no model: pass --model PATH or set \"model\" in the job file");
  }
  {
    // Headers only: a job asking a guidance-less model for guidance stops before anything loads.
    runtime::LocateOptions headers_only;
    headers_only.require_tokenizers = false;
    const runtime::ModelFiles files = runtime::locate_model(model, headers_only);
    std::vector<const job::RenderItem*> items;
    for (const job::RenderItem& item : spec.items) items.push_back(&item);
    runtime::check_guidance(files, files.variant, items);
  }
  // A read-only or missing output directory fails now, not after the model has loaded.
  io::check_writable_directory(spec.output_dir);
  log::info(spec.path + ": " + std::to_string(spec.items.size()) + " image(s) -> " + spec.output_dir + " (model " +
            model + ", " + options.device.str() + ", " + runtime::dtype_name(dtype) +
            (options.quantize_nf4 ? ", quantize nf4" : "") + ", batch " +
            (batch == kAutoBatch ? std::string("auto") : std::to_string(batch)) + ")");
  // Before the model loads: the budget is enforced and the weights are counted and monitored.
  const runtime::ModelSummary headers = runtime::summarize_model(model);  // read once
  RenderMemory memory(command.memory, options.device, dtype,
                      runtime::model_identity(headers, dtype, options.quantize_nf4 ? "nf4" : ""));
  memory.attach(options);
  const std::vector<runtime::ComponentWeights> weights =
      runtime::model_component_weights(headers, static_cast<int>(c10::elementSize(dtype)), options.quantize_nf4);
  options.residency = decide_residency(command.memory.offload, options.device, weights, memory.budget().bytes);
  auto flux = std::make_unique<runtime::FluxGenerator>(model, options);
  runtime::FluxGenerator& loaded = *flux;
  // The images this run renders (not those finished earlier) decide what to calibrate and plan.
  const runtime::JobPlan todo =
      runtime::plan_job(spec, spec.output_dir, loaded.model_description(), command.overwrite, 1);
  std::vector<const job::RenderItem*> items;
  for (const runtime::PlannedItem& p : todo.items) {
    if (p.state == runtime::ItemState::kRender) items.push_back(p.item);
  }
  memory.plan(loaded.pipeline(), weights, items, batch == kAutoBatch, batch == kAutoBatch ? kMaxAutoBatch : batch);
  std::unique_ptr<runtime::ImageGenerator> generator = memory.wrap(std::move(flux));
  InterruptGuard interrupt;
  runtime::RunnerOptions runner;
  runner.overwrite = command.overwrite;
  runner.batch_size = batch == kAutoBatch ? memory.largest_batch() : batch;
  if (batch == kAutoBatch) runner.batch_for = memory.batch_for();
  runner.stop = &interrupt.stop_flag();
  const runtime::RunSummary summary = runtime::run_job(spec, spec.output_dir, runner, *generator);
  log_summary(summary);
  memory.finish(summary, spec.output_dir);
  return summary;
}

}  // namespace fluxbatch::app
