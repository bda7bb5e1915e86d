// Job-file diagnostics: every problem found in a job file, each pointing at the user's text.
#pragma once
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"

namespace fluxbatch::job {

// One problem, e.g. `jobs/night.json:14:12 items[3].steps: expected an integer from 1 to 200, got 0`.
struct Diagnostic {
  std::string file;    // the job file as given; empty for command-line values
  int line = 0;        // 1-based; 0 when the problem has no position (file-level, command line)
  int column = 0;      // 1-based, in characters (code points); 0 for prompt lists and no position
  std::string field;   // "items[3].steps", "defaults.width", "--steps"; empty for file-level problems
  std::string message;

  // "file:line:col field: message", leaving out the parts that are empty.
  std::string to_string() const;
};

// Every diagnostic of one job file. what() lists them one per line, in file order.
class JobError : public InputError {
 public:
  explicit JobError(std::vector<Diagnostic> diagnostics);
  const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<Diagnostic> diagnostics_;
};

}  // namespace fluxbatch::job
