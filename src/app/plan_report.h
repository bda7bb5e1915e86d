// Human-readable text of a job plan (render --dry-run).
#pragma once
#include <string>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/execution/job_runner.h"

namespace fluxbatch::app {

std::string format_plan(const job::JobSpec& spec, const std::string& output_dir, const runtime::JobPlan& plan);

}  // namespace fluxbatch::app
