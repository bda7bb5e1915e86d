// The plain prompt-list reader: one prompt per line, '#' comment lines and blank lines ignored.
#pragma once
#include <string_view>

#include "job/diagnostics.h"
#include "job/raw_job.h"

namespace fluxbatch::job::detail {

// `text` has no BOM; it may hold invalid UTF-8, which is reported per line.
RawJob parse_prompt_list(std::string_view text, DiagnosticSink& sink);

}  // namespace fluxbatch::job::detail
