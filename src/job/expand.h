// From a checked RawJob to the JobSpec the renderer runs: defaults merged, seeds drawn, items
// expanded into copies, file names rendered and checked for collisions, render order fixed.
#pragma once
#include <string>

#include "fluxbatch/job/job_spec.h"
#include "job/diagnostics.h"
#include "job/raw_job.h"

namespace fluxbatch::job::detail {

JobSpec expand_job(const RawJob& raw, const std::string& path, const LoadOptions& options,
                   DiagnosticSink& sink);

}  // namespace fluxbatch::job::detail
