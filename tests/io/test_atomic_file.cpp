#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/atomic_file.h"
#include "test_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::OutputError;
using fluxbatch::io::write_file_atomic;

namespace {

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

// Lowers the file-size limit for its lifetime so the next large write fails half-way with EFBIG
// (works even as root, unlike a read-only directory).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &lowered);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("write_file_atomic writes the bytes and leaves no temp file", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "a.bin").string();
  const std::string bytes("binary\0data\n", 12);
  write_file_atomic(path, bytes);
  CHECK(fluxbatch::test::read_file(path) == bytes);
  CHECK(count_entries(dir.path()) == 1);
}

TEST_CASE("write_file_atomic replaces an existing file whole", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "a.txt").string();
  fluxbatch::test::write_file(path, "old contents that are longer");
  write_file_atomic(path, "new");
  CHECK(fluxbatch::test::read_file(path) == "new");
  CHECK(count_entries(dir.path()) == 1);
}

TEST_CASE("a write that fails half-way leaves neither a partial file nor a temp file", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "big.png").string();
  const std::string big(1 << 20, 'x');
  {
    FileSizeLimit limit(4096);
    REQUIRE_THROWS_AS(write_file_atomic(path, big), OutputError);
  }
  CHECK_FALSE(fs::exists(path));
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("a failed write keeps the previous complete file", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "keep.png").string();
  fluxbatch::test::write_file(path, "previous image");
  {
    FileSizeLimit limit(4096);
    REQUIRE_THROWS_AS(write_file_atomic(path, std::string(1 << 20, 'y')), OutputError);
  }
  CHECK(fluxbatch::test::read_file(path) == "previous image");
  CHECK(count_entries(dir.path()) == 1);
}

TEST_CASE("a failed rename removes the temp file and names the path", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "occupied").string();
  fs::create_directory(path);
  fluxbatch::test::write_file(dir / "occupied" / "child", "x");  // non-empty: rename onto it fails
  try {
    write_file_atomic(path, "data");
    FAIL("expected OutputError");
  } catch (const OutputError& e) {
    CHECK_THAT(e.what(), ContainsSubstring(path));
    CHECK_THAT(e.what(), ContainsSubstring("rename"));
  }
  CHECK(count_entries(dir.path()) == 1);
  CHECK(fs::is_directory(path));
}

TEST_CASE("writing into a missing directory is an OutputError naming the path", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "no" / "such" / "dir" / "a.png").string();
  try {
    write_file_atomic(path, "data");
    FAIL("expected OutputError");
  } catch (const OutputError& e) {
    CHECK_THAT(e.what(), ContainsSubstring(path));
  }
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("ensure_directory creates parents and rejects a file in the way", "[io]") {
  fluxbatch::test::TempDir dir;
  fluxbatch::io::ensure_directory((dir / "a" / "b").string());
  CHECK(fs::is_directory(dir / "a" / "b"));
  fluxbatch::test::write_file(dir / "file", "x");
  CHECK_THROWS_AS(fluxbatch::io::ensure_directory((dir / "file").string()), OutputError);
}

TEST_CASE("write_file_atomic without replace never touches an existing file", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "finished.png").string();
  write_file_atomic(path, "first", false);  // absent: written
  CHECK(fluxbatch::test::read_file(path) == "first");
  CHECK_THROWS_WITH(write_file_atomic(path, "second", false), ContainsSubstring("already exists"));
  CHECK(fluxbatch::test::read_file(path) == "first");
  CHECK(count_entries(dir.path()) == 1);
}
