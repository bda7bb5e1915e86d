// The fast manifest line reader (src/io/manifest_scan.h) must give exactly what the full JSON parser
// gives for every line it accepts, and decline every line it cannot read the same way.
#include <catch2/catch_test_macros.hpp>

#include <random>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/io/manifest.h"
#include "io/manifest_scan.h"
#include "test_support.h"

using fluxbatch::io::ManifestEntry;
using fluxbatch::io::ManifestStatus;
using fluxbatch::io::detail::ScanResult;
using fluxbatch::io::detail::scan_manifest_line;

namespace {

ManifestEntry ascii_entry(int64_t index) {
  ManifestEntry e;
  e.index = index;
  e.name = "fox";
  e.copy = 2;
  e.prompt = "a \"quoted\" fox\\ on a hill,\nsecond line\ttab \x01 control";
  e.seed = 18446744073709551615ULL - static_cast<uint64_t>(index);
  e.width = 1024;
  e.height = 768;
  e.steps = 28;
  e.guidance = 3.3000000000000003;
  e.max_sequence_length = 512;
  e.model = "FLUX.1-dev (diffusers, bf16)";
  e.file = "00003-fox-" + std::to_string(index) + ".png";
  e.status = ManifestStatus::kOk;
  e.timings = {1.2345678901234567, 0.0001};
  e.batch_size = 4;
  e.finished_at = "2025-01-31T12:00:00Z";
  return e;
}

void check_same(const ManifestEntry& a, const ManifestEntry& b) {
  CHECK(a.index == b.index);
  CHECK(a.name == b.name);
  CHECK(a.copy == b.copy);
  CHECK(a.prompt == b.prompt);
  CHECK(a.seed == b.seed);
  CHECK(a.width == b.width);
  CHECK(a.height == b.height);
  CHECK(a.steps == b.steps);
  CHECK(a.guidance == b.guidance);  // bit-exact, as the full parser reads it
  CHECK(a.max_sequence_length == b.max_sequence_length);
  CHECK(a.model == b.model);
  CHECK(a.file == b.file);
  CHECK(a.status == b.status);
  CHECK(a.error == b.error);
  CHECK(a.timings.generate_s == b.timings.generate_s);
  CHECK(a.timings.write_s == b.timings.write_s);
  CHECK(a.batch_size == b.batch_size);
  CHECK(a.finished_at == b.finished_at);
  CHECK(a.cached == b.cached);
}

// Accepted lines read as the full parser reads them; `reused` carries strings from an earlier line.
void check_accepted(const std::string& line, ManifestEntry& reused) {
  INFO(line);
  REQUIRE(scan_manifest_line(line, reused) == ScanResult::kEntry);
  check_same(reused, fluxbatch::io::parse_manifest_line(line));
}

}  // namespace

TEST_CASE("the fast manifest reader reads the lines fluxbatch writes exactly as the JSON parser does",
          "[io][manifest]") {
  ManifestEntry reused = ascii_entry(99);
  reused.cached = true;
  reused.prompt = std::string(300, 'x');  // a longer earlier prompt must not leak into the next
  for (int64_t i = 0; i < 3; ++i) {
    ManifestEntry e = ascii_entry(i);
    e.cached = i == 1;
    e.status = i == 2 ? ManifestStatus::kFailed : ManifestStatus::kOk;
    if (i == 2) e.error = "CUDA out of memory (\"budget\" 8 GiB)";
    check_accepted(fluxbatch::io::manifest_line(e), reused);
  }
  // Random ASCII strings (every byte below 0x80: escapes of control characters, quotes, backslashes)
  // and random numbers round-trip through manifest_line.
  std::mt19937_64 rng(1234);
  const auto random_text = [&rng](size_t max_len) {
    std::string s(rng() % max_len, ' ');
    for (char& c : s) c = static_cast<char>(rng() % 0x80);
    return s;
  };
  for (int round = 0; round < 500; ++round) {
    ManifestEntry e;
    e.index = static_cast<int64_t>(rng() >> 1) * (round % 2 ? 1 : -1);
    e.name = random_text(12);
    e.copy = static_cast<int>(rng() % 100000);
    e.prompt = random_text(200);
    e.seed = rng();
    e.width = static_cast<int>(rng() % 4096);
    e.height = static_cast<int>(rng() % 4096);
    e.steps = static_cast<int>(rng() % 100);
    e.guidance = std::uniform_real_distribution<double>(-1e6, 1e6)(rng);
    e.max_sequence_length = 256;
    e.model = random_text(30);
    e.file = random_text(40);
    e.status = rng() % 2 ? ManifestStatus::kOk : ManifestStatus::kFailed;
    e.error = random_text(50);
    e.timings = {std::uniform_real_distribution<double>(0, 1e4)(rng), 1e-300 * static_cast<double>(rng() % 7)};
    e.batch_size = static_cast<int>(rng() % 16) + 1;
    e.finished_at = fluxbatch::io::utc_timestamp();
    e.cached = rng() % 2;
    check_accepted(fluxbatch::io::manifest_line(e), reused);
  }
}

TEST_CASE("the fast manifest reader takes other spellings of the same line", "[io][manifest]") {
  ManifestEntry reused;
  // Keys in another order, spaces, \u escapes below 0x80, unknown fields (nested ones too), a
  // non-boolean "cached" (ignored, as the full parser ignores it), a timing with an integer value.
  check_accepted(
      R"( { "finished_at" : "t", "batch_size":1, "timings":{"write_s":0,"extra":[1,{"a":null}],"generate_s":2.5e-3},)"
      R"("error":"", "status":"ok", "file":"a\u002fb.png", "model":"m", "max_sequence_length":64, "guidance":3,)"
      R"("steps":4, "height":64, "width":64, "seed":0, "prompt":"\u0041\/\b\f\r", "copy":0, "name":"",)"
      R"("index":-0, "future":{"x":[true,false,null,-1.5E+3]}, "cached":"yes" } )",
      reused);
  CHECK(reused.prompt == "A/\b\f\r");
  CHECK(reused.file == "a/b.png");
  CHECK_FALSE(reused.cached);
}

TEST_CASE("the fast manifest reader declines what it cannot read as the JSON parser does", "[io][manifest]") {
  const std::string good = fluxbatch::io::manifest_line(ascii_entry(5));
  const auto with = [&good](const std::string& from, const std::string& to) {
    std::string line = good;
    const size_t at = line.find(from);
    REQUIRE(at != std::string::npos);
    return line.replace(at, from.size(), to);
  };
  ManifestEntry e;
  const std::vector<std::string> declined = {
      with("\"name\":\"fox\"", "\"name\":\"f\xc3\xa9\""),                 // UTF-8: the full parser checks it
      with("\"name\":\"fox\"", "\"name\":\"\\u00e9\""),                  // an escape above 0x7f
      with("\"width\":1024", "\"width\":1024.0"),                        // a float where an int belongs
      with("\"width\":1024", "\"width\":4294967296"),                    // too big for an int
      with("\"seed\":", "\"seed\":-"),                                   // a negative seed
      with("\"index\":5", "\"index\":5,\"index\":6"),                    // a key twice
      with("\"status\":\"ok\"", "\"status\":\"done\""),                  // not ok or failed
      with("\"steps\":28,", ""),                                         // a field missing
      with("\"timings\":{", "\"timings\":{\"generate_s\":1,"),           // a timing twice
      with("\"guidance\":", "\"guidance\":0"),                           // a leading zero
      good + "x",                                                        // trailing text
      good.substr(0, good.size() - 1),                                   // torn
      "[" + good + "]",                                                  // not an object
  };
  for (const std::string& line : declined) {
    INFO(line);
    CHECK(scan_manifest_line(line, e) == ScanResult::kDeclined);
  }
  // Event lines are recognised whatever else they hold (a summary's nested objects, its "cached" count).
  CHECK(scan_manifest_line(R"({"event":"summary","total":3,"cached":2,"stages":[{"stage":"load","seconds":1.5}],)"
                           R"("memory":{"device":"cpu","stages":[]},"finished_at":"t"})",
                           e) == ScanResult::kEvent);
}

TEST_CASE("read_manifest gives the same entries through either reader", "[io][manifest]") {
  // One manifest of lines the fast reader takes and lines it leaves to the full parser (non-ASCII).
  fluxbatch::test::TempDir dir;
  const auto path = (dir / fluxbatch::io::kManifestFileName).string();
  std::vector<ManifestEntry> written;
  {
    fluxbatch::io::ManifestWriter writer(path);
    for (int64_t i = 0; i < 20; ++i) {
      ManifestEntry e = ascii_entry(i);
      if (i % 3 == 0) e.prompt = "caf\xc3\xa9 " + std::to_string(i);
      e.cached = i % 4 == 0;
      writer.append(e);
      written.push_back(e);
    }
  }
  const auto contents = fluxbatch::io::read_manifest(path);
  CHECK(contents.skipped.empty());
  REQUIRE(contents.entries.size() == written.size());
  for (size_t i = 0; i < written.size(); ++i) check_same(contents.entries[i], written[i]);
}
