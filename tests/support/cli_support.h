// What the CLI tests (tests/app) share: running the built executable through the shell and finding
// the tiny model. FLUXBATCH_EXE is defined for the CLI test target only.
#pragma once
#include <filesystem>
#include <string>

#include "test_support.h"

namespace fluxbatch::test {

// Single-quoted for the shell (test paths hold no quotes).
inline std::string quote(const std::string& s) { return "'" + s + "'"; }
inline std::string quote(const char* s) { return quote(std::string(s)); }
inline std::string quote(const std::filesystem::path& p) { return quote(p.string()); }

// `fluxbatch ARGS` through the shell: output and exit code.
inline CommandResult fluxbatch_cmd(const std::string& args) {
  return run_command(quote(std::string(FLUXBATCH_EXE)) + " " + args);
}

// The tiny random-weight FLUX.1-dev folder (FAILs when scripts/setup.sh has not made it).
inline std::filesystem::path tiny_model() {
  return require_generated(std::filesystem::path(FLUXBATCH_MODELS_DIR) / "tiny-flux-dev");
}

}  // namespace fluxbatch::test
