// One line per image: what would happen to it and why.
#include "plan_report.h"

#include <cstdio>

namespace fluxbatch::app {
namespace {

const char* state_word(runtime::ItemState state) {
  switch (state) {
    case runtime::ItemState::kRender: return "render ";
    case runtime::ItemState::kSkip: return "skip   ";
    case runtime::ItemState::kBlocked: return "blocked";
    case runtime::ItemState::kOtherShard: return "shard  ";
  }
  return "?";
}

std::string shorten(const std::string& prompt, size_t max_chars) {
  std::string one_line = prompt;
  for (char& c : one_line) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (one_line.size() <= max_chars) return one_line;
  size_t cut = max_chars;
  while (cut > 0 && (static_cast<unsigned char>(one_line[cut]) & 0xC0) == 0x80) --cut;  // keep UTF-8 whole
  return one_line.substr(0, cut) + "...";
}

std::string item_line(const runtime::PlannedItem& planned) {
  const job::RenderItem& item = *planned.item;
  char params[128];
  std::snprintf(params, sizeof params, "%dx%d, %d steps, guidance %g, seed %llu", item.params.width,
                item.params.height, item.params.steps, item.params.guidance,
                static_cast<unsigned long long>(item.params.seed));
  std::string line = std::string("  ") + state_word(planned.state) + "  " + item.file + "  (" + params + ")  \"" +
                     shorten(item.prompt, 60) + "\"";
  if (*planned.reason != '\0') line += std::string("\n           ") + planned.reason;
  return line + "\n";
}

}  // namespace

std::string format_plan(const job::JobSpec& spec, const std::string& output_dir, const runtime::JobPlan& plan) {
  std::string out = "dry run: " + spec.path + " -> " + output_dir + " (nothing is written)\n";
  for (const std::string& w : plan.manifest_warnings) out += "  warning: unreadable manifest line " + w + "\n";
  for (const runtime::PlannedItem& planned : plan.items) {
    if (planned.state != runtime::ItemState::kOtherShard) out += item_line(planned);  // not this shard's business
  }
  out += "would render " + std::to_string(plan.count(runtime::ItemState::kRender)) + " image(s) in " +
         std::to_string(plan.batches.size()) + " batch(es); " +
         std::to_string(plan.count(runtime::ItemState::kSkip)) + " finished earlier (skipped); " +
         std::to_string(plan.count(runtime::ItemState::kBlocked)) + " blocked by existing files";
  if (const int64_t others = plan.count(runtime::ItemState::kOtherShard); others > 0) {
    out += "; " + std::to_string(others) + " other shards' image(s) not listed";
  }
  out += "\n";
  return out;
}

}  // namespace fluxbatch::app
