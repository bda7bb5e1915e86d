// Hostile and absurd inputs finish quickly with a clean error: no crash, no hang, no huge memory.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <chrono>
#include <cstdio>

#include "job_test_helpers.h"
#include "test_support.h"

using namespace fluxbatch::job;
using namespace fluxbatch::job::test;
using Catch::Matchers::StartsWith;
using Lines = std::vector<std::string>;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TEST_CASE("deep nesting is rejected before nlohmann sees it", "[job]") {
  const auto start = std::chrono::steady_clock::now();
  const std::string deep = "{\"items\": " + std::string(1000000, '[') + std::string(1000000, ']') + "}";
  CHECK(problems(deep) == Lines{"job.json:1:74: nested deeper than 64 levels; job files need only 3"});
  // Unbalanced, and brackets hidden in strings or comments do not count.
  CHECK(problems(std::string(5000000, '[')).size() == 1);
  CHECK(problems("{\"items\": [\"" + std::string(100, '[') + "\" /* [[[[[[ */]}").empty());
  CHECK(seconds_since(start) < 5.0);
  std::string at_limit = "{\"items\": [\"a\"], \"defaults\": ";
  for (int i = 0; i < kMaxNestingDepth - 1; ++i) at_limit += "[";
  for (int i = 0; i < kMaxNestingDepth - 1; ++i) at_limit += "]";
  at_limit += "}";
  CHECK(problems(at_limit) ==
        Lines{"job.json:1:30 defaults: expected an object of settings, got an array"});
}

TEST_CASE("absurd counts are rejected before expansion", "[job]") {
  const auto start = std::chrono::steady_clock::now();
  std::string text = "{\"defaults\": {\"count\": 10000}, \"items\": [";
  for (int i = 0; i < 1000; ++i) text += std::string(i ? "," : "") + "\"p" + std::to_string(i) + "\"";
  text += "]}";
  CHECK(problems(text) == Lines{"job.json:1:41 items: the job expands to 10000000 images (count "
                                "copies per item); the limit is 1000000"});
  CHECK(problems(R"({"items": [{"prompt": "a", "count": 100000000000}]})") ==
        Lines{"job.json:1:37 items[0].count: expected an integer from 1 to 10000, got 100000000000"});
  CHECK(seconds_since(start) < 2.0);
}

TEST_CASE("too many items or values give one error", "[job]") {
  const auto start = std::chrono::steady_clock::now();
  std::string many = "{\"items\": [";
  for (int64_t i = 0; i <= kMaxRenderItems; ++i) many += i ? ",\"a\"" : "\"a\"";
  many += "]}";
  CHECK(problems(many) == Lines{"job.json:1:11 items: has 1000001 entries; the limit is 1000000"});
  std::string values = "{\"items\": [\"a\"], \"model\": [";
  for (size_t i = 0; i < kMaxJsonValues; ++i) values += "1,";
  values += "1]}";
  CHECK_THAT(problems(values).at(0), StartsWith("job.json:1:"));
  CHECK_THAT(problems(values).at(0),
             Catch::Matchers::EndsWith(": more than 2000000 JSON values; a job file this large is "
                                       "not supported"));
  std::string lines;
  for (int64_t i = 0; i <= kMaxRenderItems; ++i) lines += "p\n";
  CHECK(problems(lines, "p.txt") ==
        Lines{"p.txt:1000001: more than 1000000 prompts; the limit is 1000000"});
  CHECK(seconds_since(start) < 20.0);
}

TEST_CASE("the largest allowed job expands fully and quickly", "[job]") {
  const auto start = std::chrono::steady_clock::now();
  std::string text = "{\"defaults\": {\"count\": 100}, \"items\": [";
  for (int i = 0; i < 10000; ++i) {
    text += std::string(i ? "," : "") + "{\"prompt\": \"prompt number " + std::to_string(i) +
            "\", \"priority\": " + std::to_string(i % 3) + "}";
  }
  text += "]}";
  const JobSpec spec = parse_job(text, "big.json", {});
  REQUIRE(spec.items.size() == static_cast<size_t>(kMaxRenderItems));
  CHECK(spec.items.front().priority == 2);
  CHECK(spec.items.back().index == kMaxRenderItems - 1);
  CHECK(seconds_since(start) < 10.0);
}

TEST_CASE("oversized files are refused without reading them whole", "[job]") {
  fluxbatch::test::TempDir dir;
  const auto path = (dir / "huge.json").string();
  {
    std::FILE* file = std::fopen(path.c_str(), "wb");
    REQUIRE(file != nullptr);
    std::fputs("{\"items\": [\"", file);
    std::fseek(file, static_cast<long>(kMaxJobFileBytes + 10), SEEK_SET);
    std::fputs("\"]}", file);
    std::fclose(file);
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK(problems_of_file(path) == Lines{path + ": the file is larger than the limit of 64 MiB"});
  CHECK(problems_of_file("/dev/zero") == Lines{"/dev/zero: the file is larger than the limit of 64 MiB"});
  CHECK(seconds_since(start) < 10.0);
}

TEST_CASE("a million unknown fields are reported quickly", "[job]") {
  const auto start = std::chrono::steady_clock::now();
  std::string text = "{\"items\": [{\"prompt\": \"a\"";
  for (int i = 0; i < 900000; ++i) text += ",\"stepz" + std::to_string(i) + "\":1";
  text += "}]}";
  const Lines lines = problems(text);
  REQUIRE(lines.size() == kMaxDiagnostics + 1);
  CHECK(lines[0] == "job.json:1:27 items[0].stepz0: unknown field (did you mean \"steps\"?)");
  CHECK(lines.back() == "job.json: ... and 899800 more problems (only the first 200 are listed)");
  CHECK(seconds_since(start) < 10.0);
}

TEST_CASE("a long single-line string and long keys stay readable", "[job]") {
  const std::string key(100000, 'k');
  const Lines lines = problems("{\"" + key + "\": 1, \"items\": [\"a\"]}");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "job.json:1:2 [\"" + std::string(64, 'k') +
                        "...\"]: unknown field; known fields here: model, config, cache, output, defaults, items");
  const Lines unterminated = problems("{\"items\": [\"" + std::string(1000000, 'x'));
  REQUIRE(unterminated.size() == 1);
  CHECK(unterminated[0].size() < 400);
}
