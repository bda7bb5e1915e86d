// Scaling out, as users run it: shards, several processes on one output directory, --devices with CPU
// workers, SIGTERM and --grace, and a stress test of 8 workers killed (-9) and restarted at random.
// Every test compares with one process rendering the whole job: each image exists once, has exactly
// one ok line in the manifest, and has the same bytes.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
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

using Clock = std::chrono::steady_clock;

// `n` 64x64 images of 2 steps; a third at priority 1; copies of a few prompts.
fs::path write_job(const fs::path& dir, int n, int steps = 2) {
  std::string items;
  for (int i = 0; i < n; ++i) {
    items += std::string(i ? ",\n    " : "") + "{\"prompt\": \"scene " + std::to_string(i % 5) + "\", \"seed\": " +
             std::to_string(100 + i) + (i % 3 == 0 ? ", \"priority\": 1" : "") + "}";
  }
  const fs::path path = dir / "job.json";
  fluxbatch::test::write_file(path, R"({
  "output": {"dir": "out", "name": "{index:03}-{seed}"},
  "defaults": {"width": 64, "height": 64, "steps": )" + std::to_string(steps) + R"(, "max_sequence_length": 32},
  "items": [
    )" + items + R"(
  ]
})");
  return path;
}

// `fluxbatch render JOB` on the tiny model, on the CPU (unless `device` is false: --devices), with
// --progress `progress` (none when empty), then `extra`.
std::vector<std::string> render_args(const fs::path& job, const fs::path& out, std::vector<std::string> extra = {},
                                     bool device = true, const std::string& progress = "log") {
  std::vector<std::string> args = {FLUXBATCH_EXE, "render", job.string(), "--model",
                                   fluxbatch::test::tiny_model().string(), "--out", out.string()};
  if (std::find(extra.begin(), extra.end(), "--batch") == extra.end()) args.insert(args.end(), {"--batch", "2"});
  if (device) args.insert(args.end(), {"--device", "cpu"});
  if (!progress.empty()) args.insert(args.end(), {"--progress", progress});
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::string shell(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) out += fluxbatch::test::quote(a) + " ";
  return out;
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& log) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
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

// The exit status of `pid`, waiting at most `seconds` (then it is killed and the test fails).
int wait_for(pid_t pid, double seconds = 300.0) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL("a render did not finish in " << seconds << " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status;
}

int lines_in(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return 0;
  int n = 0;
  for (char c : fluxbatch::test::read_file(path)) n += c == '\n';
  return n;
}

// Waits until the manifest has `n` lines (or the process ended); false when it ended first.
bool wait_for_lines(const fs::path& manifest, int n, pid_t pid) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (lines_in(manifest) < n && Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return lines_in(manifest) >= n;
}

// Waits until `path` contains `text` `times` times (or the process ended); false when it ended first.
bool wait_for_text(const fs::path& path, const std::string& text, pid_t pid, int times = 1) {
  const auto has = [&] {
    std::error_code ec;
    if (!fs::exists(path, ec)) return false;
    const std::string content = fluxbatch::test::read_file(path);
    int found = 0;
    for (size_t at = content.find(text); at != std::string::npos && found < times; at = content.find(text, at + 1)) {
      ++found;
    }
    return found >= times;
  };
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!has() && Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return has();
}

std::map<std::string, std::string> pngs(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".png") out[e.path().filename().string()] = fluxbatch::test::read_file(e.path());
  }
  return out;
}

// One process renders the whole job into `out`: the reference.
std::map<std::string, std::string> reference(const fs::path& job, const fs::path& out) {
  const auto r = fluxbatch::test::run_command(shell(render_args(job, out)));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return pngs(out);
}

// Every image of the reference once, byte for byte, one ok line each, nothing else left behind.
void check_same_as(const std::map<std::string, std::string>& ref, const fs::path& out) {
  const auto got = pngs(out);
  CHECK(got.size() == ref.size());
  for (const auto& [file, bytes] : ref) {
    INFO(file);
    const auto it = got.find(file);
    REQUIRE(it != got.end());
    CHECK(it->second == bytes);
  }
  std::map<std::string, int> ok;
  const auto contents = fluxbatch::io::read_manifest((out / fluxbatch::io::kManifestFileName).string());
  CHECK(contents.skipped.empty());  // a valid JSONL file: no torn or interleaved line
  for (const auto& e : contents.entries) {
    CHECK(e.status == ManifestStatus::kOk);
    ++ok[e.file];
  }
  CHECK(ok.size() == ref.size());
  for (const auto& [file, n] : ok) {
    INFO(file);
    CHECK(n == 1);
  }
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    CHECK((e.path().extension() == ".png" || name == fluxbatch::io::kManifestFileName ||
           name == fluxbatch::io::kStateDirName));
    CHECK(name.find(".tmp-") == std::string::npos);
  }
  std::error_code ec;
  for (fs::directory_iterator it(out / fluxbatch::io::kStateDirName / "claims", ec), end; !ec && it != end;
       it.increment(ec)) {
    CHECK(it->path().extension() != ".claim");  // no claim outlives its worker's stop
  }
}

// The manifest's summary lines.
std::vector<nlohmann::json> summaries(const fs::path& out) {
  std::vector<nlohmann::json> out_lines;
  std::istringstream in(fluxbatch::test::read_file(out / fluxbatch::io::kManifestFileName));
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"event\":\"summary\"") == std::string::npos) continue;
    out_lines.push_back(nlohmann::json::parse(line));
  }
  return out_lines;
}

}  // namespace

TEST_CASE("render --shard K/N renders one part; the shards together equal one process", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 10);
  const auto ref = reference(job, dir / "ref");
  int64_t rendered = 0;
  for (int k = 0; k < 3; ++k) {
    const auto r = fluxbatch::test::run_command(shell(render_args(job, dir / "out", {"--shard", std::to_string(k) + "/3"})));
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.output, ContainsSubstring("shard " + std::to_string(k) + "/3 (--shard " + std::to_string(k) + "/3)"));
    CHECK_THAT(r.output, ContainsSubstring("in other shards"));
  }
  for (const auto& s : summaries(dir / "out")) rendered += s.value("rendered", int64_t{0});
  CHECK(rendered == 10);
  check_same_as(ref, dir / "out");
  // The plan of a shard lists its own images only.
  const auto plan = fluxbatch::test::run_command(shell(render_args(job, dir / "fresh", {"--shard", "1/3", "--dry-run"})));
  CHECK(plan.exit_code == 0);
  CHECK_THAT(plan.output, ContainsSubstring("would render 3 image(s)"));
  CHECK_THAT(plan.output, ContainsSubstring("7 other shards' image(s) not listed"));
  // auto without a scheduler, and bad values, are input errors (exit 2) before anything is written.
  const auto bad = fluxbatch::test::run_command("env -u SLURM_ARRAY_TASK_ID -u SLURM_PROCID -u JOB_COMPLETION_INDEX " +
                                                shell(render_args(job, dir / "bad", {"--shard", "auto"})));
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, ContainsSubstring("pass --shard K/N"));
  CHECK(fluxbatch::test::run_command(shell(render_args(job, dir / "bad", {"--shard", "3/3"}))).exit_code == 2);
  CHECK_FALSE(fs::exists(dir / "bad"));
  // --shard auto with a Slurm array task's environment.
  const auto slurm = fluxbatch::test::run_command(
      "env SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=4 SLURM_ARRAY_TASK_MIN=0 " +
      shell(render_args(job, dir / "slurm", {"--shard", "auto", "--dry-run"})));
  CHECK_THAT(slurm.output, ContainsSubstring("would render 2 image(s)"));
}

TEST_CASE("processes rendering one job into one directory at once split it", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 12);
  const auto ref = reference(job, dir / "ref");
  std::vector<pid_t> pids;
  for (int w = 0; w < 3; ++w) pids.push_back(spawn(render_args(job, dir / "out"), dir / ("w" + std::to_string(w) + ".log")));
  for (size_t w = 0; w < pids.size(); ++w) {
    const int status = wait_for(pids[w]);
    INFO(fluxbatch::test::read_file(dir / ("w" + std::to_string(w) + ".log")));
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  int64_t rendered = 0;
  const auto lines = summaries(dir / "out");
  CHECK(lines.size() == 3);
  for (const auto& s : lines) rendered += s.value("rendered", int64_t{0});
  CHECK(rendered == 12);  // each image rendered by one of them
  check_same_as(ref, dir / "out");
}

TEST_CASE("render --devices cpu,cpu: two workers, one progress, one summary, one exit code", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 10);
  const auto ref = reference(job, dir / "ref");
  // No --device: the workers get theirs.
  std::vector<std::string> args =
      render_args(job, dir / "out", {"--devices", "cpu,cpu", "--progress-interval", "0.2"}, false);
  const auto r = fluxbatch::test::run_command(shell(args));
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, ContainsSubstring("--devices: 2 worker(s) (cpu#1, cpu#2)"));
  CHECK_THAT(r.output, ContainsSubstring("cpu#1 | "));
  CHECK_THAT(r.output, ContainsSubstring("cpu#2 | "));
  CHECK_THAT(r.output, ContainsSubstring("summary: 10 image(s) by 2 workers"));
  CHECK_THAT(r.output, ContainsSubstring("progress: "));
  std::set<std::string> workers;
  for (const auto& s : summaries(dir / "out")) workers.insert(s.value("worker", ""));
  CHECK(workers == std::set<std::string>{"cpu#1", "cpu#2"});
  check_same_as(ref, dir / "out");
  // JSON events from the parent: one start, one image event per image, one done with the exit code.
  const auto both = fluxbatch::test::run_command(shell(render_args(job, dir / "both", {"--devices", "cpu,cpu"})));
  INFO(both.output);
  CHECK_THAT(both.output, ContainsSubstring("--device and --devices"));
  CHECK(both.exit_code == 2);
  args = render_args(job, dir / "json", {"--devices", "cpu,cpu"}, false, "json");
  // In a subshell: run_command adds 2>&1 after it, which would undo the 2>/dev/null.
  const auto events = fluxbatch::test::run_command("(" + shell(args) + " 2>/dev/null)");
  CHECK(events.exit_code == 0);
  int images = 0, done = 0;
  std::istringstream in(events.output);
  for (std::string line; std::getline(in, line);) {
    const auto e = nlohmann::json::parse(line);
    images += e["event"] == "image" ? 1 : 0;
    if (e["event"] == "done") {
      ++done;
      CHECK(e["exit_code"] == 0);
      CHECK(e["rendered"] == 10);
    }
  }
  CHECK(images == 10);
  CHECK(done == 1);
  // Bad lists are input errors.
  CHECK(fluxbatch::test::run_command(shell(render_args(job, dir / "bad", {"--devices", "cpu,gpu"}, false))).exit_code == 2);
}

TEST_CASE("SIGTERM stops after the images in hand with 143; a requeued run finishes the job", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 12);
  const auto ref = reference(job, dir / "ref");
  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  const pid_t pid = spawn(render_args(job, dir / "out", {"--batch", "1"}), dir / "first.log");
  REQUIRE(wait_for_lines(manifest, 2, pid));
  ::kill(pid, SIGTERM);
  const int status = wait_for(pid, 60.0);
  INFO(fluxbatch::test::read_file(dir / "first.log"));
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 143);
  CHECK_THAT(fluxbatch::test::read_file(dir / "first.log"), ContainsSubstring("terminated (SIGTERM)"));
  CHECK(lines_in(manifest) < 13);  // stopped early (12 images + its summary line)
  const auto rerun = fluxbatch::test::run_command(shell(render_args(job, dir / "out")));
  INFO(rerun.output);
  CHECK(rerun.exit_code == 0);
  check_same_as(ref, dir / "out");
}

TEST_CASE("past --grace the image in hand is abandoned at once, its claim released", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 6, 40);  // 40 steps: a batch takes a while
  const auto ref = reference(job, dir / "ref");
  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  const pid_t pid =
      spawn(render_args(job, dir / "out", {"--batch", "2", "--grace", "0"}, true, "json"), dir / "first.log");
  // Signalled while the second batch runs (its start event is out), so an image is surely in hand: right
  // after the first batch's two manifest lines the signal could land between batches, with none in hand.
  REQUIRE(wait_for_text(dir / "first.log", R"("event":"batch","state":"started","time")", pid, 2));
  const auto signalled = Clock::now();
  ::kill(pid, SIGTERM);
  const int status = wait_for(pid, 60.0);
  const double took = std::chrono::duration<double>(Clock::now() - signalled).count();
  const std::string log = fluxbatch::test::read_file(dir / "first.log");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 143);
  CHECK(took < 5.0);
  CHECK(lines_in(manifest) < 6);
  CHECK_THAT(log, ContainsSubstring("grace time of 0.00 s is over"));
  std::error_code ec;
  for (fs::directory_iterator it(dir / "out" / fluxbatch::io::kStateDirName / "claims", ec), end; !ec && it != end;
       it.increment(ec)) {
    CHECK(it->path().extension() != ".claim");
  }
  const auto rerun = fluxbatch::test::run_command(shell(render_args(job, dir / "out")));
  INFO(rerun.output);
  CHECK(rerun.exit_code == 0);
  check_same_as(ref, dir / "out");
}

TEST_CASE("render --devices forwards Ctrl-C to its workers once and exits 130", "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 16);
  const auto ref = reference(job, dir / "ref");
  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  const std::vector<std::string> args = render_args(job, dir / "out", {"--devices", "cpu,cpu", "--batch", "1"}, false);
  const pid_t pid = spawn(args, dir / "parent.log");
  REQUIRE(wait_for_lines(manifest, 2, pid));
  ::kill(pid, SIGINT);
  const int status = wait_for(pid, 60.0);
  const std::string log = fluxbatch::test::read_file(dir / "parent.log");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  // The workers may have finished everything before the signal reached them.
  CHECK((WEXITSTATUS(status) == 130 || WEXITSTATUS(status) == 0));
  if (WEXITSTATUS(status) == 130) CHECK_THAT(log, ContainsSubstring("interrupted"));
  const auto rerun = fluxbatch::test::run_command(shell(render_args(job, dir / "out")));
  INFO(rerun.output);
  CHECK(rerun.exit_code == 0);
  check_same_as(ref, dir / "out");
}

TEST_CASE("render --devices: a Ctrl-C while the workers start stops them cleanly with 130 and kills none",
          "[cli][scaling]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 8);
  const auto ref = reference(job, dir / "ref");
  const std::vector<std::string> args = render_args(job, dir / "out", {"--devices", "cpu,cpu", "--batch", "1"}, false);
  const pid_t pid = spawn(args, dir / "parent.log");
  // The parent announces its workers just before it starts them: the signal reaches them while they
  // load, before their own handler exists. They start with it blocked, so it waits for that handler.
  REQUIRE(wait_for_text(dir / "parent.log", "--devices: 2 worker(s)", pid));
  ::kill(pid, SIGINT);
  const int status = wait_for(pid, 60.0);
  const std::string log = fluxbatch::test::read_file(dir / "parent.log");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  CHECK_THAT(log, ContainsSubstring("interrupted"));
  CHECK_THAT(log, !ContainsSubstring("killed by signal"));
  CHECK_THAT(log, !ContainsSubstring("failed ("));
  const auto rerun = fluxbatch::test::run_command(shell(render_args(job, dir / "out")));
  INFO(rerun.output);
  CHECK(rerun.exit_code == 0);
  check_same_as(ref, dir / "out");
}

TEST_CASE("stress: 8 workers on one directory, killed (-9) and restarted at random", "[cli][scaling][stress]") {
  TempDir dir;
  const fs::path job = write_job(dir.path(), 48);
  const auto ref = reference(job, dir / "ref");
  const fs::path manifest = dir / "out" / fluxbatch::io::kManifestFileName;
  constexpr int kWorkers = 8;
  std::mt19937 random(12345);
  std::vector<pid_t> pids(kWorkers);
  int logs = 0;
  const auto start = [&](int w) {
    pids[w] = spawn(render_args(job, dir / "out", {"--batch", "1", "--write-threads", "0"}),
                    dir / ("log-" + std::to_string(logs++)));
  };
  for (int w = 0; w < kWorkers; ++w) start(w);
  int kills = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(240);
  // Kill a random worker every 0.3 - 1.5 s while the job is not done, and start it again.
  while (lines_in(manifest) < 48 && Clock::now() < deadline && kills < 12) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + random() % 1200));
    const int w = static_cast<int>(random() % kWorkers);
    int status = 0;
    if (::waitpid(pids[w], &status, WNOHANG) == 0) {
      ::kill(pids[w], SIGKILL);
      ::waitpid(pids[w], &status, 0);
      ++kills;
    }
    start(w);
  }
  for (int w = 0; w < kWorkers; ++w) {
    const int status = wait_for(pids[w]);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  // Workers that ended normally report the claims they took over from killed ones.
  int64_t taken_over = 0;
  for (const auto& s : summaries(dir / "out")) taken_over += s.value("taken_over", int64_t{0});
  std::string all_logs;
  for (int i = 0; i < logs; ++i) all_logs += fluxbatch::test::read_file(dir / ("log-" + std::to_string(i)));
  int took_over_lines = 0;
  for (size_t at = all_logs.find("claims: took over "); at != std::string::npos;
       at = all_logs.find("claims: took over ", at + 1)) {
    ++took_over_lines;
  }
  WARN("stress: " << kills << " workers killed, " << taken_over << " claims taken over (" << took_over_lines
                  << " takeover log lines)");
  CHECK(kills >= 3);
  check_same_as(ref, dir / "out");
}
