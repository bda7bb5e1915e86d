#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/manifest.h"
#include "test_support.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::io::ManifestEntry;
using fluxbatch::io::ManifestStatus;

namespace {

ManifestEntry sample(int64_t index, ManifestStatus status = ManifestStatus::kOk) {
  ManifestEntry e;
  e.index = index;
  e.name = "fox";
  e.copy = 1;
  e.prompt = "a \"quoted\" fox,\nsecond line \xc3\xa9";
  e.seed = 18446744073709551615ULL - static_cast<uint64_t>(index);
  e.width = 1024;
  e.height = 768;
  e.steps = 28;
  e.guidance = 3.3000000000000003;
  e.max_sequence_length = 256;
  e.model = "FLUX.1-dev (diffusers)";
  e.file = "00003-fox-" + std::to_string(index) + ".png";
  e.status = status;
  e.error = status == ManifestStatus::kOk ? "" : "CUDA out of memory";
  e.timings = {1.25, 0.03};
  e.batch_size = 2;
  e.finished_at = "2025-01-31T12:00:00Z";
  return e;
}

void check_equal(const ManifestEntry& a, const ManifestEntry& b) {
  CHECK(a.index == b.index);
  CHECK(a.name == b.name);
  CHECK(a.copy == b.copy);
  CHECK(a.prompt == b.prompt);
  CHECK(a.seed == b.seed);
  CHECK(a.width == b.width);
  CHECK(a.height == b.height);
  CHECK(a.steps == b.steps);
  CHECK(a.guidance == b.guidance);  // exact: JSON doubles round-trip
  CHECK(a.max_sequence_length == b.max_sequence_length);
  CHECK(a.model == b.model);
  CHECK(a.file == b.file);
  CHECK(a.status == b.status);
  CHECK(a.error == b.error);
  CHECK(a.timings.generate_s == b.timings.generate_s);
  CHECK(a.timings.write_s == b.timings.write_s);
  CHECK(a.batch_size == b.batch_size);
  CHECK(a.finished_at == b.finished_at);
}

}  // namespace

TEST_CASE("manifest lines round-trip every field", "[io]") {
  const ManifestEntry e = sample(3, ManifestStatus::kFailed);
  const std::string line = fluxbatch::io::manifest_line(e);
  CHECK(line.find('\n') == std::string::npos);
  CHECK_THAT(line, ContainsSubstring("\"status\":\"failed\""));
  check_equal(fluxbatch::io::parse_manifest_line(line), e);
}

TEST_CASE("parse_manifest_line names what is wrong", "[io]") {
  CHECK_THROWS_WITH(fluxbatch::io::parse_manifest_line(R"({"index":1,"name":"x")"), ContainsSubstring("JSON"));
  CHECK_THROWS_WITH(fluxbatch::io::parse_manifest_line(R"({"index":1})"), ContainsSubstring("\"name\""));
  std::string line = fluxbatch::io::manifest_line(sample(1));
  line.replace(line.find("\"ok\""), 4, "\"done\"");
  CHECK_THROWS_WITH(fluxbatch::io::parse_manifest_line(line), ContainsSubstring("done"));
}

TEST_CASE("ManifestWriter appends lines that read_manifest reads back", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / fluxbatch::io::kManifestFileName).string();
  CHECK(fluxbatch::io::read_manifest(path).entries.empty());  // missing file reads as empty
  {
    fluxbatch::io::ManifestWriter writer(path);
    writer.append(sample(0));
    writer.append(sample(1, ManifestStatus::kFailed));
  }
  {
    fluxbatch::io::ManifestWriter writer(path);  // a second run appends, never truncates
    writer.append(sample(2));
  }
  const auto contents = fluxbatch::io::read_manifest(path);
  CHECK(contents.skipped.empty());
  REQUIRE(contents.entries.size() == 3);
  check_equal(contents.entries[0], sample(0));
  check_equal(contents.entries[1], sample(1, ManifestStatus::kFailed));
  check_equal(contents.entries[2], sample(2));
}

TEST_CASE("a torn last line is skipped and the next append starts a fresh line", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = dir / fluxbatch::io::kManifestFileName;
  const std::string whole = fluxbatch::io::manifest_line(sample(0)) + "\n";
  const std::string torn = fluxbatch::io::manifest_line(sample(1)).substr(0, 40);
  fluxbatch::test::write_file(path, whole + torn);

  auto contents = fluxbatch::io::read_manifest(path.string());
  REQUIRE(contents.entries.size() == 1);
  CHECK(contents.entries[0].index == 0);
  REQUIRE(contents.skipped.size() == 1);
  CHECK_THAT(contents.skipped[0], ContainsSubstring(path.string() + ":2:"));

  {
    fluxbatch::io::ManifestWriter writer(path.string());
    writer.append(sample(2));
  }
  contents = fluxbatch::io::read_manifest(path.string());
  REQUIRE(contents.entries.size() == 2);
  CHECK(contents.entries[1].index == 2);
  CHECK(contents.skipped.size() == 1);  // the torn fragment stays, on its own line
  CHECK(fluxbatch::test::read_file(path) == whole + torn + "\n" + fluxbatch::io::manifest_line(sample(2)) + "\n");
}

TEST_CASE("writers in several processes and threads append whole lines, never interleaved", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / fluxbatch::io::kManifestFileName).string();
  constexpr int kProcesses = 4;
  constexpr int kLines = 150;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        fluxbatch::io::ManifestWriter writer(path);
        // Two threads on one writer as well: the runner's commits and the summary.
        std::thread other([&] {
          for (int i = 0; i < kLines / 2; ++i) writer.append(sample(p * 1000 + 500 + i));
        });
        for (int i = 0; i < kLines / 2; ++i) writer.append(sample(p * 1000 + i));
        other.join();
      } catch (...) {
        code = 1;
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  const auto contents = fluxbatch::io::read_manifest(path);
  CHECK(contents.skipped.empty());
  REQUIRE(contents.entries.size() == static_cast<size_t>(kProcesses * kLines));
  std::set<int64_t> seen;
  for (const auto& e : contents.entries) seen.insert(e.index);
  CHECK(seen.size() == static_cast<size_t>(kProcesses * kLines));
}

TEST_CASE("ManifestReader reads only what was appended since, and waits for a line's end", "[io][claims]") {
  fluxbatch::test::TempDir dir;
  const auto path = dir / fluxbatch::io::kManifestFileName;
  fluxbatch::io::ManifestReader reader(path.string());
  std::vector<int64_t> got;
  std::vector<int64_t> offsets;
  const auto collect = [&](const ManifestEntry& e, int64_t offset) {
    got.push_back(e.index);
    offsets.push_back(offset);
  };
  reader.read(collect);  // no file yet
  CHECK(got.empty());
  const std::string line0 = fluxbatch::io::manifest_line(sample(0)) + "\n";
  const std::string line1 = fluxbatch::io::manifest_line(sample(1)) + "\n";
  const std::string event = "{\"event\": \"summary\"}\n";
  fluxbatch::test::write_file(path, line0 + event + line1.substr(0, 30));
  reader.read(collect);
  CHECK(got == std::vector<int64_t>{0});
  CHECK(reader.events() == 1);
  const int64_t before = reader.offset();
  CHECK(before == static_cast<int64_t>(line0.size() + event.size()));  // the half line is not consumed
  fluxbatch::test::write_file(path, line0 + event + line1);
  reader.read(collect);
  CHECK(got == std::vector<int64_t>{0, 1});
  CHECK(offsets == std::vector<int64_t>{0, before});
  reader.read(collect);
  CHECK(got.size() == 2);
  // A line the next writer had to end (torn by a kill) is reported, not parsed.
  fluxbatch::test::write_file(path, line0 + event + line1 + "{\"index\": 9\n");
  std::vector<std::string> skipped;
  reader.read(collect, &skipped);
  CHECK(got.size() == 2);
  REQUIRE(skipped.size() == 1);
  CHECK_THAT(skipped[0], ContainsSubstring(":4:"));
}

TEST_CASE("ManifestWriter reports an unwritable location as OutputError", "[io]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "missing" / fluxbatch::io::kManifestFileName).string();
  CHECK_THROWS_AS(fluxbatch::io::ManifestWriter(path), fluxbatch::OutputError);
}

TEST_CASE("utc_timestamp has the ISO 8601 shape", "[io]") {
  const std::string t = fluxbatch::io::utc_timestamp();
  REQUIRE(t.size() == 20);
  CHECK(t[4] == '-');
  CHECK(t[10] == 'T');
  CHECK(t.back() == 'Z');
}

TEST_CASE("a run summary line is written as JSON and item readers skip it", "[io][memmon]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / fluxbatch::io::kManifestFileName).string();
  fluxbatch::io::ManifestSummary summary;
  summary.total = 3;
  summary.rendered = 2;
  summary.failed = 1;
  summary.oom_retries = 1;
  summary.device = "cuda:0";
  summary.budget_bytes = int64_t{8} << 30;
  summary.allocator = "expandable_segments:True";
  summary.alloc_retries = 4;
  summary.stages = {{"denoise", 700, 800, 1000, true}, {"decode", 300, 800, -1, false}};
  summary.finished_at = "2025-01-31T12:00:00Z";
  {
    fluxbatch::io::ManifestWriter writer(path);
    writer.append(sample(0));
    writer.append_summary(summary);
    writer.append(sample(1));  // a later run appends after the summary
  }
  const auto contents = fluxbatch::io::read_manifest(path);
  CHECK(contents.skipped.empty());  // not reported as unreadable
  CHECK(contents.events == 1);
  REQUIRE(contents.entries.size() == 2);
  CHECK(contents.entries[1].index == 1);

  const nlohmann::json j = nlohmann::json::parse(fluxbatch::io::summary_line(summary));
  CHECK(j["event"] == "summary");
  CHECK(j["rendered"] == 2);
  CHECK(j["oom_retries"] == 1);
  CHECK(j["memory"]["budget_bytes"] == int64_t{8} << 30);
  CHECK(j["memory"]["alloc_retries"] == 4);
  REQUIRE(j["memory"]["stages"].size() == 2);
  CHECK(j["memory"]["stages"][0]["stage"] == "denoise");
  CHECK(j["memory"]["stages"][0]["peak_reserved_bytes"] == 800);
  CHECK(j["memory"]["stages"][0]["warned"] == true);
  CHECK(j["memory"]["stages"][1]["min_device_free_bytes"] == -1);
  CHECK_THROWS_WITH(fluxbatch::io::parse_manifest_line(fluxbatch::io::summary_line(summary)),
                    ContainsSubstring("\"index\""));
}
