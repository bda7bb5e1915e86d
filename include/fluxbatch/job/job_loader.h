// Reading job files (JSON) and prompt lists (.txt) into a validated, expanded JobSpec.
// Everything is checked before any model loads; all problems come back together in a JobError.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

#include "fluxbatch/job/job_error.h"
#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::job {

// Limits that keep hostile or mistaken inputs from crashing or stalling the loader (docs/job-files.md).
inline constexpr size_t kMaxJobFileBytes = size_t{64} << 20;  // 64 MiB
inline constexpr int kMaxNestingDepth = 64;                  // arrays/objects inside each other
inline constexpr size_t kMaxJsonValues = 2000000;            // values + keys in one job file
inline constexpr size_t kMaxPromptBytes = 65536;
inline constexpr int kMaxPriority = 1000000;                 // priority in -kMaxPriority .. kMaxPriority
inline constexpr size_t kMaxDiagnostics = 200;               // further problems are counted, not listed
inline constexpr double kMinGuidance = 0.0;
inline constexpr int kMinSequenceLength = 1;
inline constexpr uint64_t kMaxRandomSeed = 0xFFFFFFFFull;     // "random" draws 0 .. 2^32-1

enum class JobFormat { kAuto, kJson, kPromptList };

// Reads and validates `path`: ".json" is a JSON job, ".txt" a prompt list, anything else is
// sniffed (a first non-blank '{' means JSON). Throws JobError listing every problem found.
JobSpec load_job(const std::string& path, const LoadOptions& options);

// The same on text already in memory; `path` is used for messages and to resolve relative paths.
JobSpec parse_job(std::string_view text, const std::string& path, const LoadOptions& options,
                  JobFormat format = JobFormat::kAuto);

// One render item as compact JSON (all resolved fields; for PNG metadata and the manifest):
// {"index":0,"item":0,"copy":0,"priority":0,"name":"","prompt":"...","width":1024,...,"file":"..."}
std::string item_to_json(const RenderItem& item);

// The whole job for `fluxbatch validate --json`: path, model, output_dir, name_template and the
// items in render order. indent < 0: one line; otherwise pretty-printed with that indent.
std::string job_items_to_json(const JobSpec& spec, int indent = -1);

}  // namespace fluxbatch::job
