// `fluxbatch render` against output faults, injected through FLUXBATCH_TEST_WRITE_FAULT (src/io/write_faults.h;
// a read-only directory cannot be made for root, and a full disk cannot be made without privileges): a
// read-only output directory, a disk that fills up on the second image or on the first manifest line, a
// filesystem without locks. Each time: one clear line, exit 3, the images written kept, no temporary
// file, and a re-run that finishes the job with exactly the images of an undisturbed run.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <set>
#include <string>

#include "cli_support.h"
#include "fluxbatch/io/manifest.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::EndsWith;
using Catch::Matchers::StartsWith;
using fluxbatch::test::quote;
using fluxbatch::test::TempDir;

namespace {

fs::path write_job(const fs::path& dir) {
  const fs::path job = dir / "job.json";
  fluxbatch::test::write_file(job, R"({
  "output": {"dir": "out", "name": "{index:02}-{seed}"},
  "defaults": {"width": 64, "height": 64, "steps": 1, "max_sequence_length": 16},
  "items": [{"prompt": "a red fox", "seed": 1}, {"prompt": "a blue bird", "seed": 2}, {"prompt": "a green frog", "seed": 3}]
})");
  return job;
}

fluxbatch::test::CommandResult render(const fs::path& job, const std::string& fault = "") {
  const std::string env = fault.empty() ? "" : "FLUXBATCH_TEST_WRITE_FAULT=" + fault + " ";
  return fluxbatch::test::run_command(env + quote(std::string(FLUXBATCH_EXE)) + " render " + quote(job) + " --model " +
                                      quote(fluxbatch::test::tiny_model()) + " --device cpu --batch 1 2>&1");
}

std::string last_line(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// The undisturbed run's outputs in <dir>/clean (same job path: PNGs record the item's location).
void reference_run(const TempDir& dir, const fs::path& job) {
  const auto clean = render(job);
  INFO(clean.output);
  REQUIRE(clean.exit_code == 0);
  fs::rename(dir / "out", dir / "clean");
}

// After the fault: a re-run without it finishes with the reference's images.
void rerun_matches_reference(const TempDir& dir, const fs::path& job, const std::string& expect_in_log) {
  const auto again = render(job);
  INFO(again.output);
  CHECK(again.exit_code == 0);
  CHECK_THAT(again.output, ContainsSubstring(expect_in_log));
  for (const std::string name : {"00-1.png", "01-2.png", "02-3.png"}) {
    INFO(name);
    CHECK(fluxbatch::test::read_file(dir / "out" / name) == fluxbatch::test::read_file(dir / "clean" / name));
  }
  const auto manifest = fluxbatch::io::read_manifest((dir / "out" / "manifest.jsonl").string());
  CHECK(manifest.skipped.empty());
  CHECK(manifest.entries.size() == 3);
}

}  // namespace

TEST_CASE("a read-only output directory is refused before the model loads", "[cli][faults]") {
  TempDir dir;
  const fs::path job = write_job(dir.path());
  const auto result = render(job, "erofs");
  INFO(result.output);
  CHECK(result.exit_code == 3);
  CHECK(last_line(result.output) == "fluxbatch: output error: cannot write to the output directory " +
                                        (dir / "out").string() +
                                        ": Read-only file system (choose a writable one with --out or the job's "
                                        "output.dir)");
  CHECK_THAT(result.output, !ContainsSubstring("loaded"));
  CHECK(files_in(dir / "out").empty());
}

TEST_CASE("a disk that fills up on the second image: the first is kept, no temporary file, the re-run finishes",
          "[cli][faults]") {
  TempDir dir;
  const fs::path job = write_job(dir.path());
  reference_run(dir, job);
  // Room for the first PNG and its manifest line (plus a margin for its timings), then 100 bytes.
  const auto first_png = fs::file_size(dir / "clean" / "00-1.png");
  const auto line = fluxbatch::test::read_file(dir / "clean" / "manifest.jsonl").find('\n') + 1;
  const auto result = render(job, "enospc-after:" + std::to_string(first_png + line + 100));
  INFO(result.output);
  CHECK(result.exit_code == 3);
  CHECK_THAT(last_line(result.output),
             StartsWith("fluxbatch: output error: cannot write " + (dir / "out" / "01-2.png").string()) &&
                 ContainsSubstring("No space left on device") &&
                 EndsWith("; the job stopped with 1 image(s) rendered and 2 left: fix the cause and run the same "
                          "command again to resume"));
  CHECK(files_in(dir / "out") == std::set<std::string>{"00-1.png", "manifest.jsonl"});
  CHECK(fluxbatch::io::read_manifest((dir / "out" / "manifest.jsonl").string()).entries.size() == 1);
  rerun_matches_reference(dir, job, "2 image(s) to render");
}

TEST_CASE("a disk that fills up on a manifest line: no torn line, the image kept and its line restored",
          "[cli][faults]") {
  TempDir dir;
  const fs::path job = write_job(dir.path());
  reference_run(dir, job);
  const auto first_png = fs::file_size(dir / "clean" / "00-1.png");
  const auto result = render(job, "enospc-after:" + std::to_string(first_png + 10));
  INFO(result.output);
  CHECK(result.exit_code == 3);
  CHECK_THAT(last_line(result.output),
             StartsWith("fluxbatch: output error: manifest " + (dir / "out" / "manifest.jsonl").string() +
                        ": write failed: No space left on device; the job stopped with 1 image(s) rendered"));
  CHECK(files_in(dir / "out") == std::set<std::string>{"00-1.png", "manifest.jsonl"});
  CHECK(fluxbatch::test::read_file(dir / "out" / "manifest.jsonl").empty());
  rerun_matches_reference(dir, job, "finished by an interrupted run");
}

TEST_CASE("a filesystem without locks renders with a warning", "[cli][faults]") {
  TempDir dir;
  const fs::path job = write_job(dir.path());
  const auto result = render(job, "nolock");
  INFO(result.output);
  CHECK(result.exit_code == 0);
  CHECK_THAT(result.output, ContainsSubstring("this filesystem cannot lock files"));
  CHECK(fluxbatch::io::read_manifest((dir / "out" / "manifest.jsonl").string()).entries.size() == 3);
}

// The same on a real filesystem: a 36 KiB tmpfs (room for one 64x64 PNG, the manifest and the worker's two
// claim-store files, its heartbeat and the claim of the image in hand, one page each; not for two PNGs) in a
// private mount namespace, grown for the re-run, then remounted read-only. Needs root (CAP_SYS_ADMIN);
// elsewhere the test says it is skipped (the injected faults above cover the same code).
TEST_CASE("on a real tmpfs: disk full mid-job, resume after growing it, read-only remount", "[cli][faults][tmpfs]") {
  TempDir dir;
  const fs::path job = write_job(dir.path());
  if (fluxbatch::test::run_command("unshare -m sh -c 'mount -t tmpfs -o size=16k tmpfs " + quote(dir.path()) +
                                   "' 2>&1").exit_code != 0) {
    SKIP("cannot mount a tmpfs in a private mount namespace here (needs root)");
  }
  reference_run(dir, job);
  const fs::path mnt = dir / "mnt", res = dir / "res";
  fs::create_directories(mnt);
  fs::create_directories(res);
  const std::string render_cmd = quote(std::string(FLUXBATCH_EXE)) + " render " + quote(job) + " --model " +
                                 quote(fluxbatch::test::tiny_model()) + " --device cpu --batch 1 --out ";
  const std::string m = quote(mnt), r = quote(res);
  const std::string script =
      "mount -t tmpfs -o size=36k tmpfs " + m + " || exit 99\n" +
      render_cmd + m + "/out > " + r + "/full.log 2>&1; echo $? > " + r + "/full.rc\n" +
      "ls -a " + m + "/out > " + r + "/full.ls\n" +
      "mount -o remount,size=4m " + m + "\n" +
      render_cmd + m + "/out > " + r + "/again.log 2>&1; echo $? > " + r + "/again.rc\n" +
      "cp -a " + m + "/out " + r + "/out\n" +
      "mkdir " + m + "/ro && mount -o remount,ro " + m + "\n" +
      render_cmd + m + "/ro > " + r + "/ro.log 2>&1; echo $? > " + r + "/ro.rc\n";
  fluxbatch::test::write_file(dir / "script.sh", script);
  const auto ran = fluxbatch::test::run_command("unshare -m sh " + quote(dir / "script.sh") + " 2>&1");
  INFO(ran.output);
  REQUIRE(ran.exit_code == 0);
  const auto log = [&](const char* name) { return fluxbatch::test::read_file(res / name); };
  INFO(log("full.log"));
  CHECK(log("full.rc") == "3\n");
  CHECK_THAT(last_line(log("full.log")),
             StartsWith("fluxbatch: output error: cannot write " + (mnt / "out" / "01-2.png").string()) &&
                 ContainsSubstring("No space left on device") &&
                 EndsWith("the job stopped with 1 image(s) rendered and 2 left: fix the cause and run the same "
                          "command again to resume"));
  CHECK(log("full.ls") == ".\n..\n00-1.png\nmanifest.jsonl\n");  // no temporary file
  INFO(log("again.log"));
  CHECK(log("again.rc") == "0\n");
  for (const std::string name : {"00-1.png", "01-2.png", "02-3.png"}) {
    INFO(name);
    CHECK(fluxbatch::test::read_file(res / "out" / name) == fluxbatch::test::read_file(dir / "clean" / name));
  }
  CHECK(fluxbatch::io::read_manifest((res / "out" / "manifest.jsonl").string()).entries.size() == 3);
  INFO(log("ro.log"));
  CHECK(log("ro.rc") == "3\n");
  CHECK(last_line(log("ro.log")) == "fluxbatch: output error: cannot write to the output directory " +
                                        (mnt / "ro").string() +
                                        ": Read-only file system (choose a writable one with --out or the job's "
                                        "output.dir)");
}
