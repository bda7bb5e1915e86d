// `fluxbatch render` killed mid-job (SIGKILL: no handler runs) and run again finishes the job with
// every image exactly once, byte for byte what an uninterrupted run writes; an item that cannot
// fit the memory budget even alone fails with its reason while the rest render (exit code 1).
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::ManifestStatus;
using fluxbatch::test::TempDir;

namespace {


// Eight 64x64 images, some prompts repeated, rendered into <dir>/out.
fs::path write_job(const fs::path& dir, const std::string& extra_item = "") {
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": "out", "name": "{index:03}-{seed}"},
  "defaults": {"width": 64, "height": 64, "steps": 2, "seed": 10, "max_sequence_length": 64},
  "items": [
    "a lighthouse at night",
    {"prompt": "a red fox in the snow", "count": 3, "seed": 7},
    "a harbour at dawn",
    {"prompt": "a lighthouse at night", "seed": 99},
    {"prompt": "a green field", "count": 2, "seed": 3})" + extra_item + R"(
  ]
})");
  return path;
}

std::vector<std::string> render_args(const fs::path& job) {
  return {FLUXBATCH_EXE, "render", job.string(), "--model", fluxbatch::test::tiny_model().string(), "--device", "cpu", "--batch", "2"};
}

// Starts the command with output to `log`; returns its pid.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

int lines_in(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return 0;
  const std::string text = fluxbatch::test::read_file(path);
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

std::string quoted(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) out += "'" + a + "' ";
  return out;
}

// Every file in the output directory other than the manifest.
std::set<std::string> outputs(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name != fluxbatch::io::kManifestFileName) out.insert(name);
  }
  return out;
}

}  // namespace

TEST_CASE("render killed mid-job and run again finishes with every image exactly once", "[cli][stages]") {
  // The uninterrupted reference, moved aside (same job path: the PNGs record the item's location).
  TempDir dir;
  const fs::path job = write_job(dir.path());
  const auto reference = fluxbatch::test::run_command(quoted(render_args(job)));
  REQUIRE(reference.exit_code == 0);
  fs::rename(dir / "out", dir / "clean");
  const std::set<std::string> files = outputs(dir / "clean");
  REQUIRE(files.size() == 8);

  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  const pid_t pid = spawn(render_args(job), dir / "first.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int status = 0;
  bool exited = false;
  while (lines_in(manifest) < 2 && std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    REQUIRE(::waitpid(pid, &status, 0) == pid);
  }
  INFO(fluxbatch::test::read_file(dir / "first.log"));
  REQUIRE(WIFSIGNALED(status));  // killed, not finished
  const int before = lines_in(manifest);
  CHECK(before >= 2);
  CHECK(before < 8);

  const auto rerun = fluxbatch::test::run_command(quoted(render_args(job)));
  INFO(rerun.output);
  CHECK(rerun.exit_code == 0);
  CHECK(outputs(dir / "out") == files);  // every image, no temporaries left over
  std::map<std::string, int> ok;
  for (const auto& e : fluxbatch::io::read_manifest(manifest.string()).entries) {
    CHECK(e.status == ManifestStatus::kOk);
    ++ok[e.file];
  }
  CHECK(ok.size() == 8);
  for (const auto& [file, count] : ok) {
    INFO(file);
    CHECK(count == 1);  // rendered once: nothing finished before the kill was redone
    const bool same_bytes =
        fluxbatch::test::read_file(dir / "out" / file) == fluxbatch::test::read_file(dir / "clean" / file);
    CHECK(same_bytes);
  }
  // A third run has nothing to do.
  const auto third = fluxbatch::test::run_command(quoted(render_args(job)));
  CHECK(third.exit_code == 0);
  CHECK_THAT(third.output, ContainsSubstring("0 rendered, 8 skipped"));
}

TEST_CASE("an item that cannot fit the budget even alone fails with its reason; the rest render", "[cli][stages][memory]") {
  TempDir dir;
  // The 64x64 images need well under 16 MiB with the tiny model (weights included); a 2048x2048
  // one needs more than that for its first transformer block, so it fails fast.
  const fs::path job = write_job(dir.path(), ",\n    {\"prompt\": \"a huge poster\", \"width\": 2048, \"height\": 2048}");
  std::vector<std::string> args = render_args(job);
  args.insert(args.end(), {"--vram-budget", "16M"});
  const auto r = fluxbatch::test::run_command(quoted(args));
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(outputs(dir / "out").size() == 8);
  int failed = 0;
  for (const auto& e : fluxbatch::io::read_manifest((dir / "out" / fluxbatch::io::kManifestFileName).string()).entries) {
    if (e.status != ManifestStatus::kFailed) continue;
    ++failed;
    CHECK(e.width == 2048);
    CHECK_THAT(e.error, ContainsSubstring("out of memory"));
    CHECK_THAT(e.error, ContainsSubstring("--vram-budget of 16.0 MiB"));
    CHECK_THAT(e.error, ContainsSubstring("even alone, at batch 1"));
  }
  CHECK(failed == 1);
}
