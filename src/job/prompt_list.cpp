#include "job/prompt_list.h"

#include "fluxbatch/job/job_loader.h"

namespace fluxbatch::job::detail {
namespace {

std::string_view trim(std::string_view line) {
  const size_t first = line.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  const size_t last = line.find_last_not_of(" \t\r");
  return line.substr(first, last - first + 1);
}

}  // namespace

RawJob parse_prompt_list(std::string_view text, DiagnosticSink& sink) {
  RawJob raw;
  raw.prompt_list = true;
  raw.items_offset = 0;
  size_t line_number = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    ++line_number;
    const std::string_view prompt = trim(text.substr(start, end - start));
    const size_t line_start = start;
    start = end + 1;
    if (prompt.empty() || prompt.front() == '#') continue;
    if (raw.items.size() == static_cast<size_t>(kMaxRenderItems)) {
      sink.add(line_start, "", "more than " + std::to_string(kMaxRenderItems) +
                                   " prompts; the limit is " + std::to_string(kMaxRenderItems));
      break;
    }
    RawItem item;
    item.offset = line_start;
    item.label = "line " + std::to_string(line_number);
    item.prompt = std::string(prompt);
    const std::string problem = prompt_problem(prompt);
    if (!problem.empty()) {
      sink.add(line_start, "", "the prompt " + problem);
      item.valid = false;
    }
    raw.items.push_back(std::move(item));
  }
  if (raw.items.empty() && sink.empty()) {
    sink.add(kNoOffset, "", "no prompts: the file has only blank lines and '#' comments");
  }
  return raw;
}

}  // namespace fluxbatch::job::detail
