// The JSON job-file reader: syntax, structure and field checks, into a RawJob.
#pragma once
#include <string_view>

#include "job/diagnostics.h"
#include "job/raw_job.h"

namespace fluxbatch::job::detail {

// `text` is valid UTF-8 without a BOM and passed prescan_json. Problems go to `sink`.
RawJob parse_json_job(std::string_view text, DiagnosticSink& sink);

}  // namespace fluxbatch::job::detail
