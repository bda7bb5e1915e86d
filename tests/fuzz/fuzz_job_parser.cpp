// libFuzzer target over the job layer: every input must either load into a JobSpec that keeps the
// documented invariants or fail with a JobError. Any other exception, a crash, a sanitizer report
// or a hang is a bug.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fluxbatch/job/job_loader.h"
#include "fluxbatch/job/name_template.h"

using namespace fluxbatch::job;

namespace {

void require(bool condition) {
  if (!condition) std::abort();
}

bool safe_file_name(const std::string& file) {
  if (file.empty() || file.front() == '/' || file.back() == '/') return false;
  if (file.find('\\') != std::string::npos) return false;
  size_t start = 0;
  while (start <= file.size()) {
    size_t end = file.find('/', start);
    if (end == std::string::npos) end = file.size();
    const std::string component = file.substr(start, end - start);
    if (component.empty() || component == "." || component == "..") return false;
    start = end + 1;
  }
  return true;
}

void check_spec(const JobSpec& spec) {
  require(!spec.items.empty());
  require(spec.items.size() <= static_cast<size_t>(kMaxRenderItems));
  std::set<std::string> files;
  for (size_t i = 0; i < spec.items.size(); ++i) {
    const RenderItem& item = spec.items[i];
    if (i > 0) {
      const RenderItem& before = spec.items[i - 1];
      require(before.priority > item.priority ||
              (before.priority == item.priority && before.index < item.index));
    }
    const RenderParams& p = item.params;
    require(p.width >= kMinSide && p.width <= kMaxSide && p.width % 16 == 0);
    require(p.height >= kMinSide && p.height <= kMaxSide && p.height % 16 == 0);
    require(p.steps >= 1 && p.steps <= kMaxSteps);
    require(p.guidance >= 0 && p.guidance <= kMaxGuidance);
    require(p.count >= 1 && p.count <= kMaxCount && item.copy < p.count);
    require(p.max_sequence_length >= 1 && p.max_sequence_length <= kMaxSequenceLength);
    require(!item.prompt.empty());
    require(safe_file_name(item.file));
    require(files.insert(item.file).second);
    if (i < 16) {  // the round trip is slow under the sanitizers; a few items cover the code
      const auto json = nlohmann::json::parse(item_to_json(item));
      require(json["seed"].get<uint64_t>() == p.seed);
      require(json["file"] == item.file);
      require(json["prompt"] == item.prompt);
    }
  }
  if (spec.items.size() <= 16) (void)nlohmann::json::parse(job_items_to_json(spec));
}

void run(std::string_view text, const std::string& path, JobFormat format) {
  LoadOptions options;
  uint64_t next_seed = 7;
  options.seed_source = [&next_seed] { return next_seed++; };
  try {
    check_spec(parse_job(text, path, options, format));
  } catch (const JobError& error) {
    require(!error.diagnostics().empty());
    require(error.what()[0] != '\0');
    for (const auto& diagnostic : error.diagnostics()) {
      require(diagnostic.file.empty() || diagnostic.file == path);
      require(!diagnostic.message.empty());
    }
  }
}

void run_template(std::string_view text) {
  const std::string tmpl(text.substr(0, std::min<size_t>(text.size(), 512)));
  RenderItem item;
  item.prompt = tmpl;
  item.params.seed = 18446744073709551615ull;
  (void)slugify(tmpl, 1 + text.size() % kMaxSlugLength);
  if (!name_template_error(tmpl).empty()) return;
  require(safe_file_name(format_name(tmpl, item)));  // a valid template never throws
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  run(text, "fuzz/job.json", JobFormat::kJson);
  run(text, "fuzz/list.txt", JobFormat::kPromptList);
  run_template(text);
  return 0;
}
