// render: everything is checked before the model loads; then the runner does the work.
#include "cli_render.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/flux_generator.h"
#include "fluxbatch/runtime/execution/pipeline.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "fluxbatch/runtime/model_io/consistency.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"
#include "exit_codes.h"
#include "interrupt.h"
#include "plan_report.h"
#include "render_cache.h"
#include "render_workers.h"
#include "render_session.h"
#include "render_settings.h"
#include "run_report.h"

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
    "  fluxbatch render jobs/night.json --config low-vram-8g --print-config\n"
    "      the settings a preset gives (flags still win), each with where it came from; renders nothing\n"
    "  fluxbatch render jobs/night.json --cache ~/.cache/fluxbatch/renders --cache-max 50G\n"
    "      prompts encoded and images rendered by earlier jobs are reused, not computed again\n"
    "  fluxbatch render posters.json --model models/FLUX.1-dev --vram-budget 6G --vae-tiles 512\n"
    "      decode in exact 512 px tiles: the whole decode's pixels with a fraction of its memory (auto, the\n"
    "      default, tiles only the sizes whose whole decode would not fit the budget)\n"
    "  fluxbatch render jobs/night.json --progress json > events.jsonl\n"
    "      one JSON event per line (start, stage, batch, step, image, done) for a wrapper\n"
    "  fluxbatch render jobs/night.json --devices all --vram-budget 70G\n"
    "      one worker process per GPU, each with its own budget, sharing the job; one progress and summary\n"
    "  sbatch --array=0-7 --gres=gpu:1 --wrap 'fluxbatch render jobs/night.json --shard auto'\n"
    "      a Slurm job array: task K renders shard K of 8 (scripts/slurm/ has a full example)\n"
    "\n"
    "Resuming: run the same command again. An image is skipped when its PNG exists and manifest.jsonl\n"
    "records it with the same prompt, seed, size, steps, guidance, max_sequence_length, LoRAs and model.\n"
    "Existing images are never replaced unless --overwrite is given. Ctrl-C or SIGTERM finishes the\n"
    "images in hand (at most --grace seconds) and stops (exit 130 / 143); a second Ctrl-C aborts at once.\n"
    "\n"
    "Sharing: any number of fluxbatch processes (on one host or many, over a shared filesystem) may render\n"
    "the same job into the same output directory at once; they split the images between them through\n"
    "claim files in OUT/.fluxbatch/claims, higher priorities first, each image once.\n"
    "\n"
    "Each PNG carries a \"parameters\" text chunk in the A1111/Forge format and a \"fluxbatch\" chunk\n"
    "with the item as JSON.\n"
    "\n"
    "LoRAs: \"loras\": [{\"path\": \"styles/ink.safetensors\", \"scale\": 0.8}] in the job's defaults or an item\n"
    "(an item's list replaces the defaults'; [] means none), or --lora PATH[:SCALE] (repeatable) for prompt\n"
    "lists. Applied as side paths next to the base weights (dense or NF4, never re-quantized); images of one\n"
    "batch may use different LoRAs. A LoRA is part of what an image is: resume and the cache tell them apart.\n";

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

std::string model_for(const RenderCommand& command, const job::JobSpec& spec) {
  if (!command.model.empty()) return command.model;
  return spec.model.value_or("");
}

// A loaded job and what its image defaults came from (for --print-config).
struct LoadedJob {
  job::JobSpec spec;
  job::ParamOverrides command_line;  // the flags
  job::ParamOverrides recommended;   // what the model's variant recommends where it differs from built-in
};

// Loads the job with defaults below the job's own "defaults", in this order: the command line, the
// preset's "defaults", the model variant's recommended settings (schnell: 4 steps, 256 T5 tokens). The
// variant is read from file headers only; on a dry run or --print-config an unreadable model keeps the
// built-in (dev) defaults.
LoadedJob load_job_for_model(const RenderCommand& command, const job::RenderSettings* preset) {
  job::LoadOptions options = to_load_options(command.job);
  const auto load = [&options, &command]() {
    job::JobSpec spec = job::load_job(command.file, options);
    if (!options.seed_source && std::any_of(spec.items.begin(), spec.items.end(),
                                             [](const job::RenderItem& item) { return item.seed_drawn; })) {
      // "random" seeds come from the output directory's seed base, so every worker and every later run
      // there draws the same ones (a dry run only reads it).
      options.seed_source = shared_seed_source(spec.output_dir, !command.dry_run && !command.print_config);
      if (options.seed_source) spec = job::load_job(command.file, options);
    }
    return spec;
  };
  LoadedJob out;
  out.command_line = options.cli_defaults;
  job::ParamOverrides& d = options.cli_defaults;
  if (preset != nullptr) merge_preset_defaults(d, *preset);
  out.spec = load();
  const std::string model = model_for(command, out.spec);
  if (model.empty()) return out;
  runtime::VariantDefaults recommended;
  try {
    recommended = runtime::variant_defaults(runtime::probe_variant(model));
  } catch (const ModelError&) {
    if (command.dry_run || command.print_config) return out;
    throw;
  }
  const job::RenderParams builtin;
  bool changed = false;
  if (recommended.steps != builtin.steps) {
    out.recommended.steps = recommended.steps;
    if (!d.steps) {
      d.steps = recommended.steps;
      changed = true;
    }
  }
  if (recommended.max_sequence_length != builtin.max_sequence_length) {
    out.recommended.max_sequence_length = recommended.max_sequence_length;
    if (!d.max_sequence_length) {
      d.max_sequence_length = recommended.max_sequence_length;
      changed = true;
    }
  }
  if (changed) {
    options.seed_source = nullptr;
    out.spec = load();
  }
  return out;
}

void print_dry_run(const RenderCommand& command, const job::JobSpec& spec, const std::string& model_path,
                   const runtime::GeneratorOptions& options, int batch, const job::Shard& shard) {
  std::string model = model_path.empty() ? "(none given: pass --model to render)" : model_path;
  std::error_code ec;
  if (!model_path.empty() && !std::filesystem::exists(model_path, ec)) model += " (does not exist)";
  // The model is not loaded, so its description (recorded in the manifest) is not compared here.
  // --batch auto is decided after loading (calibration); `fluxbatch plan` shows its prediction.
  const runtime::JobPlan plan =
      runtime::plan_job(spec, spec.output_dir, std::nullopt, command.overwrite, batch == kAutoBatch ? 1 : batch, {}, false, shard);
  const std::string batch_text = batch == kAutoBatch ? "auto (chosen per size after loading; see fluxbatch plan)"
                                                     : std::to_string(batch);
  std::printf("model: %s\ndevice: %s, dtype %s%s, batch %s\n%s", model.c_str(), options.device.str().c_str(),
              runtime::dtype_name(*options.dtype).c_str(), options.quantize_nf4 ? ", quantize nf4" : "", batch_text.c_str(),
              format_plan(spec, spec.output_dir, plan).c_str());
  std::fflush(stdout);
}

void log_summary(const runtime::RunSummary& s) {
  std::string shared;
  if (s.done_elsewhere > 0) shared += ", " + std::to_string(s.done_elsewhere) + " by other workers";
  if (s.other_shard > 0) shared += ", " + std::to_string(s.other_shard) + " in other shards";
  log::info("done: " + std::to_string(s.rendered) + " rendered, " + std::to_string(s.skipped) + " skipped, " +
            std::to_string(s.failed) + " failed, " + std::to_string(s.blocked) + " blocked" + shared + ", of " +
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
  add_speed_options(*sub, command.speed);
  sub->add_flag("--overwrite", command.overwrite, "Render every image again, replacing existing files");
  sub->add_flag("--lora-merge", command.lora_merge,
                "Merge LoRAs into the transformer's weights per batch instead of side paths: batches then hold one "
                "LoRA set each, a dense transformer only (NF4 and offload keep side paths; originals kept in host "
                "memory, put back exactly). Pays off when many images share few LoRA sets");
  sub->add_option("--write-threads", command.write_threads,
                  "Threads that encode and write PNGs while the device goes on with the next image; 0 writes each "
                  "image before the next is made (default 2). Manifest lines keep the images' order either way")
      ->type_name("N")
      ->check(CLI::Range(0, 64));
  add_progress_options(*sub, command.progress);
  add_cache_options(*sub, command.cache);
  add_scale_options(*sub, command.scale);
  sub->add_flag("-n,--dry-run", command.dry_run, "Validate and show what would be rendered or skipped; write nothing");
  sub->add_option("--config", command.config,
                  "A settings preset: a name (configs/NAME.json: low-vram-8g, throughput-h100, schnell-fast, ...) or a "
                  "JSON file. Its options apply where no flag is given; overrides the job's \"config\"")
      ->type_name("NAME|FILE");
  sub->add_flag("--print-config", command.print_config,
                "Print every effective setting and where it came from (flag, preset, job file, default); render nothing");
  command.cli = sub;
  add_job_options(*sub, command.job);
  sub->footer(kFooter);
  return sub;
}

std::optional<runtime::RunSummary> run_render(const RenderCommand& given) {
  // The preset (--config, else the job's "config"): its options fill what no flag set.
  RenderCommand command = given;
  std::optional<job::RenderSettings> preset;
  if (!command.config.empty()) preset = load_preset(command.config, "", "--config");
  LoadedJob loaded = load_job_for_model(command, preset ? &*preset : nullptr);
  if (!preset && loaded.spec.config) {
    preset = load_preset(*loaded.spec.config, loaded.spec.config_base, loaded.spec.path + ": config");
    loaded = load_job_for_model(command, &*preset);
  }
  const std::vector<SettingSource> sources = apply_preset(command, preset ? &*preset : nullptr);
  if (preset) log::info("preset " + preset->name + " (" + preset->path + ")");
  if (command.print_config) {
    const std::string text = format_settings(
        sources, image_defaults(loaded.spec, loaded.command_line, preset ? &*preset : nullptr, loaded.recommended),
        preset ? &*preset : nullptr);
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
    return std::nullopt;
  }
  const job::JobSpec& spec = loaded.spec;
  const std::string model = model_for(command, spec);
  runtime::GeneratorOptions options = resolve_options(command);
  const c10::ScalarType dtype = *options.dtype;
  const int batch = parse_batch(command.batch);
  if (!command.memory.budget.empty()) runtime::parse_byte_size(command.memory.budget, "--vram-budget");
  runtime::parse_byte_size(command.memory.reserve, "--vram-reserve");
  options.vae_tiles = runtime::parse_vae_tiles(command.memory.vae_tiles);
  runtime::RunnerOptions runner;
  apply_scale_options(command.scale, runner);  // --shard is checked here, before anything runs
  if (command.dry_run) {
    print_dry_run(command, spec, model, options, batch, runner.shard);
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
  runtime::StageClock clock;
  clock.enter("load");  // the model's files: headers, fingerprints for the cache
  const runtime::ModelSummary headers = runtime::summarize_model(model);  // read once
  const runtime::ModelFiles files = runtime::locate_model(model);
  // Components mixed from different models fail here, in one line, before the job starts (the model
  // itself loads lazily inside the job, where any error stops the job instead).
  runtime::check_components(files, tokenizers::ClipTokenizer(files.tokenizer_dir),
                            tokenizers::T5Tokenizer(files.tokenizer_2_dir));
  apply_speed_options(command.speed, options);  // before the caches: their keys take the compute modes
  // The LoRAs: read and checked against the model's layers (configs only) before any weights load.
  if (auto loras = runtime::LoraCatalog::load(loaded.spec, files); !loras->empty()) options.loras = loras;
  options.merge_loras = command.lora_merge;
  // A read-only or missing output directory fails now, not after the model has loaded (and after every
  // input check, so an invalid job creates nothing).
  io::check_writable_directory(spec.output_dir);
  if (!command.scale.devices.empty()) return run_workers(command, spec, runner.shard);
  log::info(spec.path + ": " + std::to_string(spec.items.size()) + " image(s) -> " + spec.output_dir + " (model " +
            model + ", " + options.device.str() + ", " + runtime::dtype_name(dtype) +
            (options.quantize_nf4 ? ", quantize nf4" : "") + ", batch " +
            (batch == kAutoBatch ? std::string("auto") : std::to_string(batch)) + ")");
  RenderCaches caches = open_caches(command.cache, spec.cache, files, options.device, dtype, options.quantize_nf4,
                                    compute_mode_identity(command.speed));
  // Merged and side-path LoRAs round differently: their images are kept apart in the cache.
  if (caches.images && command.lora_merge) caches.images->set_lora_mode("merged");
  options.prompt_cache = caches.prompts;
  clock.enter("");

  // The display first: it hears every stage mark and step of the device side.
  // The display asks the session (made below; the display stops before it goes) for the memory in use.
  std::atomic<RenderSession*> session_ptr{nullptr};
  std::unique_ptr<runtime::Progress> progress = make_progress(command.progress, [&session_ptr]() -> int64_t {
    const RenderSession* session = session_ptr.load();
    return session != nullptr ? session->in_use_bytes() : -1;
  });
  runtime::Progress* shown = progress.get();
  options.on_step = [shown](int step, int steps) {
    log::debug("step " + std::to_string(step) + "/" + std::to_string(steps));
    if (shown != nullptr) shown->step(step, steps);
  };
  SessionSetup setup;
  setup.model = model;
  setup.description = runtime::describe_model(files, options.compute_fp8, options.attention_fp8);
  setup.headers = &headers;
  setup.memory = command.memory;
  setup.generator = options;
  setup.calibrate = batch == kAutoBatch;
  setup.max_batch = batch == kAutoBatch ? kMaxAutoBatch : batch;
  setup.on_stage = [shown](const std::string& stage) {
    if (shown != nullptr) shown->stage(stage);
  };
  // The device side (budget, monitor, model, memory plan) comes with the first image that must really
  // be rendered; the plan, and for --batch auto the calibration of sizes not measured before, is made
  // around the job's encode stage, so no component loads twice.
  RenderSession session(std::move(setup), clock);
  session_ptr = &session;
  struct StopDisplay {  // before the session goes (an error on the way out): no more questions to it
    runtime::Progress* progress;
    ~StopDisplay() {
      if (progress != nullptr) progress->stop();
    }
  } stop_display{shown};

  InterruptGuard interrupt;
  runner.overwrite = command.overwrite;
  runner.batch_size = batch == kAutoBatch ? kMaxAutoBatch : batch;
  if (batch == kAutoBatch) runner.batch_for = [&session](const job::RenderItem& item) { return session.batch_of(item); };
  runner.stop = &interrupt.stop_flag();
  runner.write_threads = command.write_threads;
  runner.observer = shown;
  runner.image_cache = caches.images.get();
  runner.group_by_loras = command.lora_merge;
  runner.on_abandon = [shown] {
    if (shown != nullptr) shown->stop();
    std::fflush(stdout);
    std::_Exit(exit_code_for_stop());
  };
  const runtime::RunSummary summary = runtime::run_job(spec, spec.output_dir, runner, session);
  if (shown != nullptr) {
    // First: the "done" event, and the live line gone (no redraw after it) before the summary lines.
    runtime::ProgressDone done;
    done.rendered = summary.rendered;
    done.cached = summary.cached;
    done.skipped = summary.skipped;
    done.failed = summary.failed;
    done.blocked = summary.blocked;
    done.not_started = summary.not_started;
    done.interrupted = summary.interrupted;
    done.wall_s = clock.since_start();
    done.images_per_hour = done.wall_s > 0.0 ? 3600.0 * static_cast<double>(summary.rendered) / done.wall_s : 0.0;
    done.stages = clock.totals();
    done.exit_code = exit_code_for(summary);
    shown->finish(done);
  }
  log_summary(summary);
  report_run(summary, clock, session.stop(), options.device.str(), caches.store.get(), spec.output_dir,
             command.scale.worker);
  return summary;
}

}  // namespace fluxbatch::app
