// Helpers shared by every test executable: temporary directories, file I/O, running the CLI.
#pragma once
#include <filesystem>
#include <string>

namespace fluxbatch::test {

// A fresh directory under the system temp dir, removed (recursively) when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& content);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a shell command line and captures its output and exit code.
CommandResult run_command(const std::string& command_line);

// Path of a file produced by scripts/setup.sh (tiny models, goldens). Fails the test with a clear
// message when it is missing, never skips.
std::filesystem::path require_generated(const std::filesystem::path& path);

}  // namespace fluxbatch::test
