#include "cli_plan.h"

#include <cstdio>
#include <map>
#include <tuple>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/inspect.h"
#include "fluxbatch/runtime/memory_budget.h"
#include "fluxbatch/runtime/memory_planner.h"

namespace fluxbatch::app {
namespace {

std::vector<runtime::ResolutionGroup> resolution_groups(const job::JobSpec& spec) {
  std::map<std::tuple<int, int, int>, size_t> index;
  std::vector<runtime::ResolutionGroup> groups;
  for (const job::RenderItem& item : spec.items) {
    const auto key = std::make_tuple(item.params.width, item.params.height, item.params.max_sequence_length);
    const auto [it, added] = index.emplace(key, groups.size());
    if (added) groups.push_back({item.params.width, item.params.height, item.params.max_sequence_length, 0});
    ++groups[it->second].images;
  }
  return groups;
}

// Bytes each component takes on the device at `dtype_size`; quantized ones stay as stored, and with
// --quantize nf4 the transformer's and T5's Linear weights count as NF4.
std::vector<runtime::ComponentWeights> component_weights(const std::string& model, int dtype_size, bool nf4) {
  std::vector<runtime::ComponentWeights> out;
  for (const runtime::ComponentSummary& c : runtime::summarize_model(model).components) {
    out.push_back({c.name, runtime::loaded_bytes(c, dtype_size, nf4)});
  }
  return out;
}

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

std::string text_report(const std::string& job, const std::string& model, const std::string& dtype,
                        const std::string& quantize, bool offload, const runtime::Plan& plan) {
  using runtime::format_bytes;
  std::string out = "job: " + job + "\nmodel: " + model + "\ndtype " + dtype + (quantize == "none" ? "" : ", quantize " + quantize) +
                    (offload ? ", offload" : "") +
                    ", budget " + format_bytes(plan.budget_bytes) +
                    " (activation estimates are uncalibrated first guesses)\n";
  for (const runtime::GroupPlan& g : plan.groups) {
    out += "\n" + std::to_string(g.group.width) + "x" + std::to_string(g.group.height) + ", sequence " +
           std::to_string(g.group.max_sequence_length) + ": " + std::to_string(g.group.images) +
           " image(s), batch " + std::to_string(g.batch_size) + ", predicted peak " + format_bytes(g.peak_bytes) +
           " (" + g.limiting_stage + ")" + (g.fits ? "" : "  DOES NOT FIT even at batch 1") + "\n";
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

std::string json_report(const std::string& job, const std::string& model, const std::string& dtype,
                        const std::string& quantize, bool offload, const runtime::Plan& plan) {
  std::string out = "{\"job\": " + json_string(job) + ", \"model\": " + json_string(model) +
                    ", \"dtype\": " + json_string(dtype) + ", \"quantize\": " + json_string(quantize) + ", \"offload\": " + (offload ? "true" : "false") +
                    ", \"calibrated\": false, \"budget_bytes\": " + std::to_string(plan.budget_bytes) +
                    ", \"peak_bytes\": " + std::to_string(plan.peak_bytes) +
                    ", \"fits\": " + (plan.fits ? "true" : "false") + ", \"groups\": [";
  for (size_t i = 0; i < plan.groups.size(); ++i) {
    const runtime::GroupPlan& g = plan.groups[i];
    out += std::string(i ? ", " : "") + "{\"width\": " + std::to_string(g.group.width) +
           ", \"height\": " + std::to_string(g.group.height) +
           ", \"max_sequence_length\": " + std::to_string(g.group.max_sequence_length) +
           ", \"images\": " + std::to_string(g.group.images) + ", \"batch_size\": " + std::to_string(g.batch_size) +
           ", \"peak_bytes\": " + std::to_string(g.peak_bytes) + ", \"limiting_stage\": " +
           json_string(g.limiting_stage) + ", \"fits\": " + (g.fits ? "true" : "false") + ", \"stages\": [";
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
  cmd->add_option("--vram-budget", command.budget, "Bytes the run may use on the device, e.g. 24G, 7.5GiB")
      ->type_name("SIZE")
      ->required();
  cmd->add_option("--dtype", command.dtype, "bf16, fp16 or fp32 (default bf16)")->type_name("T");
  add_quantize_option(*cmd, command.quantize);
  cmd->add_flag("--offload", command.offload, "Keep only the running stage's components on the device");
  cmd->add_option("--max-batch", command.max_batch, "Largest batch considered (default 64)")->type_name("N");
  cmd->add_flag("--json", command.json, "Print the plan as JSON");
  add_job_options(*cmd, command.job);
  cmd->footer(
      "Only file headers are read. Activation sizes are first guesses (ComfyUI's estimates); the\n"
      "render's out-of-memory halving is the backstop.\n"
      "Examples:\n"
      "  fluxbatch plan jobs/night.json --model /models/FLUX.1-dev --vram-budget 22G\n"
      "  fluxbatch plan prompts.txt --model /models/FLUX.1-dev --vram-budget 7.5G --offload --json\n");
  return cmd;
}

void run_plan(const PlanCommand& command) {
  const job::JobSpec spec = job::load_job(command.file, to_load_options(command.job));
  const std::string model = command.model.empty() ? spec.model.value_or("") : command.model;
  if (model.empty()) throw InputError(command.file + ": no model: pass --model PATH or set \"model\" in the job file");
  const int dtype_size = c10::elementSize(runtime::parse_dtype(command.dtype));
  const int64_t budget = runtime::parse_byte_size(command.budget);
  if (command.max_batch < 1) throw InputError("--max-batch: must be at least 1, got " + std::to_string(command.max_batch));
  const runtime::MemoryModel memory =
      runtime::flux_memory_model(component_weights(model, dtype_size, command.quantize == "nf4"), dtype_size,
                                 command.offload);
  const runtime::Plan plan = runtime::plan_batches(memory, resolution_groups(spec), budget, command.max_batch);
  const std::string dtype = runtime::dtype_name(runtime::parse_dtype(command.dtype));
  const std::string report = command.json ? json_report(spec.path, model, dtype, command.quantize, command.offload, plan)
                                          : text_report(spec.path, model, dtype, command.quantize, command.offload, plan);
  std::fwrite(report.data(), 1, report.size(), stdout);
}

}  // namespace fluxbatch::app
