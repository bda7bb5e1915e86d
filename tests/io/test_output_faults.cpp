// Disk and output faults: a full disk (injected ENOSPC, and the kernel's own EFBIG past RLIMIT_FSIZE), a
// read-only filesystem, a filesystem without locks, a manifest deleted under a running writer.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/resource.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/atomic_file.h"
#include "fluxbatch/io/manifest.h"
#include "fluxbatch/io/output_fault.h"
#include "io/write_faults.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::OutputFault;

namespace {

// An injected write fault for the scope (io/write_faults.h), none afterwards.
class InjectedFault {
 public:
  explicit InjectedFault(const char* spec) { fluxbatch::io::detail::set_write_fault(spec); }
  ~InjectedFault() { fluxbatch::io::detail::set_write_fault(nullptr); }
};

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

fluxbatch::io::ManifestEntry entry(int64_t index) {
  fluxbatch::io::ManifestEntry e;
  e.index = index;
  e.prompt = "a fox";
  e.file = "img-" + std::to_string(index) + ".png";
  e.finished_at = "2025-01-31T12:00:00Z";
  return e;
}

}  // namespace

TEST_CASE("a disk that fills up mid-file is an OutputFault; no temp file, no partial image", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "img.png").string();
  InjectedFault full("enospc-after:1000");
  try {
    fluxbatch::io::write_file_atomic(path, std::string(4096, 'x'));
    FAIL("no error");
  } catch (const OutputFault& e) {
    CHECK(e.error_code() == ENOSPC);
    CHECK_THAT(std::string(e.what()), ContainsSubstring("cannot write " + path) &&
                                          ContainsSubstring("No space left on device"));
  }
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("the kernel's file-size limit (EFBIG) is a filesystem fault too", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  rlimit saved{};
  getrlimit(RLIMIT_FSIZE, &saved);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit lowered = saved;
  lowered.rlim_cur = 4096;
  setrlimit(RLIMIT_FSIZE, &lowered);
  bool fault = false;
  try {
    fluxbatch::io::write_file_atomic((dir / "big.png").string(), std::string(1 << 20, 'x'));
  } catch (const OutputFault& e) {
    fault = e.error_code() == EFBIG;
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  CHECK(fault);
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("a manifest line the disk cannot take leaves no torn line behind", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "manifest.jsonl").string();
  fluxbatch::io::ManifestWriter writer(path);
  writer.append(entry(0));
  const std::string before = fluxbatch::test::read_file(path);
  {
    InjectedFault full("enospc-after:10");  // the line's first 10 bytes reach the disk, then ENOSPC
    CHECK_THROWS_AS(writer.append(entry(1)), OutputFault);
  }
  CHECK(fluxbatch::test::read_file(path) == before);
  writer.append(entry(2));  // space again
  const auto contents = fluxbatch::io::read_manifest(path);
  CHECK(contents.skipped.empty());
  REQUIRE(contents.entries.size() == 2);
  CHECK(contents.entries[1].index == 2);
}

TEST_CASE("a manifest deleted under a running writer is started again at its path", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "manifest.jsonl").string();
  fluxbatch::io::ManifestWriter writer(path);
  writer.append(entry(0));
  fs::remove(path);
  writer.append(entry(1));
  REQUIRE(fs::exists(path));
  const auto contents = fluxbatch::io::read_manifest(path);
  REQUIRE(contents.entries.size() == 1);
  CHECK(contents.entries[0].index == 1);
  // Both writers append to the new file from now on (the path, not the deleted file, is shared).
  fluxbatch::io::ManifestWriter second(path);
  second.append(entry(2));
  writer.append(entry(3));
  const auto after = fluxbatch::io::read_manifest(path);
  CHECK(after.skipped.empty());
  REQUIRE(after.entries.size() == 3);
  CHECK(after.entries[1].index == 2);
  CHECK(after.entries[2].index == 3);
}

TEST_CASE("a filesystem without locks (network mounts) works unlocked", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "manifest.jsonl").string();
  InjectedFault nolock("nolock");
  fluxbatch::io::ManifestWriter writer(path);
  writer.append(entry(0));
  CHECK(fluxbatch::io::read_manifest(path).entries.size() == 1);
}

TEST_CASE("a read-only output directory is refused up front, naming it", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  InjectedFault read_only("erofs");
  try {
    fluxbatch::io::check_writable_directory(dir.path().string());
    FAIL("no error");
  } catch (const OutputFault& e) {
    CHECK(e.error_code() == EROFS);
    CHECK(std::string(e.what()) == "cannot write to the output directory " + dir.path().string() +
                                       ": Read-only file system (choose a writable one with --out or the job's "
                                       "output.dir)");
  }
  CHECK_THROWS_AS(fluxbatch::io::ManifestWriter((dir / "manifest.jsonl").string()), OutputFault);
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("check_writable_directory creates the directory and leaves nothing in it", "[io][faults]") {
  fluxbatch::test::TempDir dir;
  const fs::path out = dir / "a" / "b";
  fluxbatch::io::check_writable_directory(out.string());
  CHECK(fs::is_directory(out));
  CHECK(count_entries(out) == 0);
}
