#include "cli_plan.h"

#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/memory/decode_plan.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_calibration.h"
#include "fluxbatch/runtime/memory/memory_planner.h"
#include "fluxbatch/runtime/model_io/consistency.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"
#include "render_settings.h"

namespace fluxbatch::app {
namespace {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      continue;
    }
    out += c;
  }
  return out + "\"";
}

struct ReportHeader {
  std::string job, model, device, dtype, quantize, budget_how, cache;
  runtime::Residency residency = runtime::Residency::kStaged;
  std::optional<StreamingPlan> stream;  // residency kStream
  std::string vae_tiles;                       // --vae-tiles as given
  std::vector<runtime::DecodePlan> decodes;  // per group, in the plan's order
};

bool all_calibrated(const runtime::Plan& plan) {
  for (const runtime::GroupPlan& g : plan.groups) {
    if (!g.calibrated) return false;
  }
  return !plan.groups.empty();
}

std::string text_report(const ReportHeader& h, const runtime::Plan& plan) {
  size_t group_index = 0;
  using runtime::format_bytes;
  std::string out = "job: " + h.job + "\nmodel: " + h.model + "\ndevice " + h.device + ", dtype " + h.dtype +
                    (h.quantize == "none" ? "" : ", quantize " + h.quantize) + ", components " + runtime::residency_name(h.residency) + ", budget " + h.budget_how + "\n";
  out += all_calibrated(plan) ? "activations: calibrated (" + h.cache + ")\n"
                              : "activations: built-in first guesses where marked uncalibrated (no calibration in " +
                                    h.cache + "; render --batch auto measures and stores one)\n";
  if (h.stream) {
    for (const auto& [p, what, stage] : {std::tuple(&h.stream->transformer, "transformer", "denoise"),
                                         std::tuple(&h.stream->t5, "T5", "encode")}) {
      out += "streaming: " + runtime::describe_stream(*p, what) + "; the " + stage + " stage holds " +
             format_bytes(p->resident_bytes) + " of " + what + " weights (" + std::to_string(p->slots) +
             " slot(s) of " + format_bytes(p->slot_bytes) + ")\n";
    }
  }
  for (const runtime::GroupPlan& g : plan.groups) {
    out += "\n" + std::to_string(g.group.width) + "x" + std::to_string(g.group.height) + ", sequence " +
           std::to_string(g.group.max_sequence_length) + ": " + std::to_string(g.group.images) +
           " image(s), batch " + std::to_string(g.batch_size) + ", predicted peak " + format_bytes(g.peak_bytes) +
           " (" + g.limiting_stage + ")" + (g.calibrated ? ", calibrated" : ", uncalibrated") + (g.fits ? "" : "  DOES NOT FIT even at batch 1") + "\n";
    const runtime::DecodePlan& d = h.decodes.at(group_index++);
    out += "  VAE decode " + (d.tiled ? "in " + d.describe() : std::string("whole")) + ": predicted decode peak " +
           format_bytes(d.peak_bytes) + " (--vae-tiles " + h.vae_tiles + ")\n";
    for (const runtime::StagePlan& s : g.stages) {
      char line[256];
      std::snprintf(line, sizeof line, "  %-8s weights %10s + activations %10s = %10s   resident: ", s.name.c_str(),
                    format_bytes(s.weight_bytes).c_str(), format_bytes(s.activation_bytes).c_str(),
                    format_bytes(s.peak_bytes).c_str());
      out += line + join(s.resident) + "\n";
    }
  }
  out += "\npredicted peak " + format_bytes(plan.peak_bytes) + " of " + format_bytes(plan.budget_bytes) +
         (plan.fits ? "" : ": some groups do not fit") + "\n";
  return out;
}

std::string json_report(const ReportHeader& h, const runtime::Plan& plan) {
  std::string out = "{\"job\": " + json_string(h.job) + ", \"model\": " + json_string(h.model) +
                    ", \"device\": " + json_string(h.device) + ", \"dtype\": " + json_string(h.dtype) +
                    ", \"quantize\": " + json_string(h.quantize) +
                    ", \"offload\": " +
                    (h.residency == runtime::Residency::kOffload || h.residency == runtime::Residency::kStream
                         ? "true"
                         : "false") +
                    ", \"residency\": " + json_string(runtime::residency_name(h.residency)) + ", \"calibrated\": " +
                    (all_calibrated(plan) ? "true" : "false") + ", \"calibration_cache\": " + json_string(h.cache) +
                    ", \"budget\": " + json_string(h.budget_how) +
                    ", \"budget_bytes\": " + std::to_string(plan.budget_bytes) +
                    ", \"peak_bytes\": " + std::to_string(plan.peak_bytes) +
                    ", \"fits\": " + (plan.fits ? "true" : "false") + ", \"stream\": ";
  if (h.stream) {
    // The transformer's plan at the top level; T5's (per prompt encoded) under "t5".
    const auto fields = [](const runtime::BlockStreamPlan& p, const char* per) {
      return "\"blocks\": " + std::to_string(p.blocks) + ", \"resident_blocks\": " + std::to_string(p.resident_blocks) +
             ", \"streamed_blocks\": " + std::to_string(p.streamed_blocks()) + ", \"slots\": " +
             std::to_string(p.slots) + ", \"slot_bytes\": " + std::to_string(p.slot_bytes) +
             ", \"resident_bytes\": " + std::to_string(p.resident_bytes) + ", \"streamed_bytes_per_" + per +
             "\": " + std::to_string(p.streamed_bytes);
    };
    out += "{" + fields(h.stream->transformer, "step") + ", \"t5\": {" + fields(h.stream->t5, "prompt") + "}}";
  } else {
    out += "null";
  }
  out += ", \"vae_tiles\": " + json_string(h.vae_tiles) + ", \"groups\": [";
  for (size_t i = 0; i < plan.groups.size(); ++i) {
    const runtime::GroupPlan& g = plan.groups[i];
    out += std::string(i ? ", " : "") + "{\"width\": " + std::to_string(g.group.width) +
           ", \"height\": " + std::to_string(g.group.height) +
           ", \"max_sequence_length\": " + std::to_string(g.group.max_sequence_length) +
           ", \"images\": " + std::to_string(g.group.images) + ", \"batch_size\": " + std::to_string(g.batch_size) +
           ", \"peak_bytes\": " + std::to_string(g.peak_bytes) + ", \"limiting_stage\": " +
           json_string(g.limiting_stage) + ", \"calibrated\": " + (g.calibrated ? "true" : "false") +
           ", \"fits\": " + (g.fits ? "true" : "false");
    const runtime::DecodePlan& d = h.decodes.at(i);
    out += std::string(", \"decode\": {\"mode\": ") + (d.tiled ? "\"tiles\"" : "\"whole\"") +
           ", \"tile_pixels\": " + (d.tiled ? std::to_string(d.setup.tile_pixels) : "null") +
           ", \"feature_maps\": " + (d.tiled ? json_string(d.setup.maps_on_host ? "host" : "device") : "null") +
           ", \"activation_bytes\": " + std::to_string(d.activation_bytes) +
           ", \"peak_bytes\": " + std::to_string(d.peak_bytes) + ", \"fits\": " + (d.fits ? "true" : "false") + "}";
    out += ", \"stages\": [";
    for (size_t j = 0; j < g.stages.size(); ++j) {
      const runtime::StagePlan& s = g.stages[j];
      out += std::string(j ? ", " : "") + "{\"name\": " + json_string(s.name) + ", \"resident\": [";
      for (size_t k = 0; k < s.resident.size(); ++k) out += std::string(k ? ", " : "") + json_string(s.resident[k]);
      out += "], \"weight_bytes\": " + std::to_string(s.weight_bytes) +
             ", \"activation_bytes\": " + std::to_string(s.activation_bytes) +
             ", \"peak_bytes\": " + std::to_string(s.peak_bytes) + "}";
    }
    out += "]}";
  }
  return out + "]}\n";
}

}  // namespace

CLI::App* add_plan_command(CLI::App& app, PlanCommand& command) {
  CLI::App* cmd = app.add_subcommand(
      "plan", "Show a job's memory plan: stages, resident components, batch and predicted peak per size");
  cmd->add_option("JOB", command.file, "Job file (.json) or prompt list (.txt, one prompt per line)")->required();
  cmd->add_option("-m,--model", command.model, "FLUX.1 model (overrides the job's \"model\"); only headers are read")
      ->type_name("PATH");
  add_memory_options(*cmd, command.memory, /*monitor=*/false);
  cmd->add_option("--device", command.device, "cuda, cuda:N or cpu (default: cuda if available, else cpu)")
      ->type_name("DEV");
  cmd->add_option("--dtype", command.dtype, "bf16, fp16 or fp32 (default: bf16 on cuda, fp32 on cpu)")
      ->type_name("T");
  add_quantize_option(*cmd, command.quantize);
  add_speed_options(*cmd, command.speed, /*render=*/false);
  cmd->add_option("--max-batch", command.max_batch, "Largest batch considered (default 64)")->type_name("N");
  cmd->add_flag("--json", command.json, "Print the plan as JSON");
  cmd->add_option("--config", command.config,
                  "A settings preset, as for render (overrides the job's \"config\"): its device, dtype, quantize, "
                  "offload, vram_budget, vram_reserve and vae_tiles apply where no flag is given, its defaults below "
                  "the command line's")
      ->type_name("NAME|FILE");
  command.cli = cmd;
  add_job_options(*cmd, command.job);
  cmd->footer(
      "Only file headers (and the tokenizers, to check that the components belong together) are\n"
      "read. Activation sizes come from the calibration cache (written by render --batch auto on\n"
      "this GPU model, model and size), else from built-in first guesses\n"
      "(ComfyUI's estimates); the render's out-of-memory halving is the backstop. Without\n"
      "--vram-budget the budget is what the device has free minus --vram-reserve.\n"
      "Examples:\n"
      "  fluxbatch plan jobs/night.json --model /models/FLUX.1-dev --vram-budget 22G\n"
      "  fluxbatch plan prompts.txt --model /models/FLUX.1-dev --vram-budget 7.5G --offload on --json\n"
      "  fluxbatch plan big.json --model /models/FLUX.1-dev --vram-budget 4G --vae-tiles auto   # 4096² decodes\n");
  return cmd;
}

void run_plan(const PlanCommand& given) {
  // The preset (--config, else the job's "config") as render applies it.
  PlanCommand command = given;
  std::optional<job::RenderSettings> preset;
  if (!command.config.empty()) preset = load_preset(command.config, "", "--config");
  job::LoadOptions load = to_load_options(command.job);
  job::JobSpec spec = job::load_job(command.file, load);
  if (!preset && spec.config) preset = load_preset(*spec.config, spec.config_base, spec.path + ": config");
  if (preset) {
    merge_preset_defaults(load.cli_defaults, *preset);
    spec = job::load_job(command.file, load);
    const auto take = [&](const char* key, std::string& field) {
      if (auto v = preset_value(command.cli, &*preset, key)) field = *v;
    };
    take("device", command.device);
    take("dtype", command.dtype);
    take("quantize", command.quantize);
    take("offload", command.memory.offload);
    take("vae_tiles", command.memory.vae_tiles);
    take("vram_budget", command.memory.budget);
    take("vram_reserve", command.memory.reserve);
  }
  const std::string model = command.model.empty() ? spec.model.value_or("") : command.model;
  if (model.empty()) throw InputError(command.file + ": no model: pass --model PATH or set \"model\" in the job file");
  const c10::Device device = runtime::parse_device(
      command.device.empty() ? (runtime::cuda_available() ? "cuda" : "cpu") : command.device);
  const c10::ScalarType dtype =
      runtime::parse_dtype(command.dtype.empty() ? (device.is_cuda() ? "bf16" : "fp32") : command.dtype);
  const int dtype_size = static_cast<int>(c10::elementSize(dtype));
  if (command.max_batch < 1) throw InputError("--max-batch: must be at least 1, got " + std::to_string(command.max_batch));
  const runtime::VaeTiles vae_tiles = runtime::parse_vae_tiles(command.memory.vae_tiles);
  const Budget budget = resolve_budget(device, command.memory);
  const runtime::ModelFiles files = runtime::locate_model(model);
  {
    // The same refusals as render, before planning memory for a model that could not run.
    runtime::check_components(files, tokenizers::ClipTokenizer(files.tokenizer_dir),
                              tokenizers::T5Tokenizer(files.tokenizer_2_dir));
    std::vector<const job::RenderItem*> items;
    for (const job::RenderItem& item : spec.items) items.push_back(&item);
    runtime::check_guidance(files, files.variant, items);
  }
  const runtime::ModelSummary summary = runtime::summarize_model(model);  // headers, read once
  const bool fp8 = command.speed.compute == "fp8";
  // Activations, not weights: fp8 attention changes only which calibrations apply (InputError without fp8).
  const bool fp8_attention = attention_fp8(command.speed);
  std::vector<runtime::ComponentWeights> weights =
      runtime::model_component_weights(summary, dtype_size, command.quantize == "nf4", fp8);
  const runtime::Residency residency = resolve_residency(command.memory.offload, device, weights, budget.bytes);
  const std::vector<runtime::ResolutionGroup> groups = resolution_groups(spec);
  const runtime::CalibrationCache cache(runtime::default_calibration_path());
  const std::string identity =
      runtime::model_identity(summary, dtype, calibration_tag(command.quantize == "nf4", fp8, fp8_attention));
  std::optional<StreamingPlan> stream;
  if (residency == runtime::Residency::kStream) {
    stream = plan_streaming(files, weights, dtype_size, groups, cache, runtime::device_identity(device), identity,
                            command.max_batch, /*batch_fixed=*/false, budget.bytes);
    weights = stream->weights;
  }
  const runtime::MemoryModel base = runtime::flux_memory_model(weights, dtype_size, residency);
  std::vector<runtime::MemoryModel> models =
      models_for_groups(base, groups, cache, runtime::device_identity(device), identity);
  // The VAE decode per size (whole or exact tiles, --vae-tiles), planned as render plans it.
  const models::vae::VaeConfig vae = runtime::vae_config(files);
  std::vector<runtime::DecodePlan> decodes;
  for (size_t i = 0; i < groups.size(); ++i) {
    decodes.push_back(runtime::plan_decode(vae, groups[i].width, groups[i].height, dtype_size, device.is_cuda(),
                                           runtime::decode_stage_weight_bytes(models[i]), budget.bytes, vae_tiles,
                                           runtime::calibrated_decode_bytes(models[i], groups[i].width, groups[i].height)));
    runtime::apply_decode_plan(models[i], decodes.back());
  }
  const runtime::Plan plan = runtime::plan_batches(models, groups, budget.bytes, command.max_batch);
  const ReportHeader header{spec.path, model, device.str(), runtime::dtype_name(dtype), command.quantize, budget.how, cache.path(),
                            residency, stream, command.memory.vae_tiles, decodes};
  const std::string report = command.json ? json_report(header, plan) : text_report(header, plan);
  std::fwrite(report.data(), 1, report.size(), stdout);
}

}  // namespace fluxbatch::app
