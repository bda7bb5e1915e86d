// --cache as a user sees it: a second job with the same images copies them (no model loaded, no
// device used), one with the same prompts loads no text encoder, and the results are byte for byte
// what rendering gives; damaged entries are ignored; the size bound holds; two renders can share a
// cache; a render killed mid-job leaves nothing that a later one misuses.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "fluxbatch/io/manifest.h"
#include "cli_support.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::CommandResult;
using fluxbatch::test::TempDir;
using fluxbatch::test::quote;
using fluxbatch::test::tiny_model;

namespace {

// Five 64x64 images, two prompts repeated.
fs::path write_job(const TempDir& dir, const std::string& extra_root = "", int seed = 5,
                   const std::string& name = "job.json") {
  const fs::path path = dir / name;
  fluxbatch::test::write_file(path, R"({)" + extra_root + R"(
  "output": {"dir": "out"},
  "defaults": {"width": 64, "height": 64, "steps": 2, "seed": )" + std::to_string(seed) + R"(, "max_sequence_length": 32},
  "items": [{"prompt": "a red fox", "count": 3}, "a blue bird", {"prompt": "a red fox", "seed": 50}]
})");
  return path;
}

CommandResult render(const TempDir& dir, const std::string& out, const std::string& extra,
                     const std::string& job = "job.json") {
  return fluxbatch::test::run_command("env FLUXBATCH_CACHE_DIR=" + quote(dir / "calibration") + " " +
                                      quote(FLUXBATCH_EXE) + " render --device cpu --batch 2 --model " +
                                      quote(tiny_model()) + " " + quote(dir / job) + " --out " +
                                      quote(dir / out) + " " + extra);
}

std::map<std::string, std::string> pngs(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".png") out[e.path().filename().string()] = fluxbatch::test::read_file(e.path());
  }
  return out;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

std::vector<fs::path> entries(const fs::path& cache, const std::string& kind) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(cache / kind, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file() && it->path().filename().string().size() == 64) out.push_back(it->path());
  }
  return out;
}

nlohmann::json summary_line(const fs::path& out) {
  std::istringstream lines(fluxbatch::test::read_file(out / fluxbatch::io::kManifestFileName));
  std::string line, last;
  while (std::getline(lines, line)) last = line;
  return nlohmann::json::parse(last);
}

}  // namespace

TEST_CASE("with --cache a second job copies its images, and one with the same prompts loads no text encoder",
          "[cli][cache]") {
  TempDir dir;
  write_job(dir);
  const std::string cache = "--cache " + quote(dir / "cache");
  const CommandResult first = render(dir, "first", cache);
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.output, ContainsSubstring("image cache: 0 of 5 image(s) found"));
  CHECK(entries(dir / "cache", "images-v1").size() == 5);
  CHECK(entries(dir / "cache", "embeddings-v1").size() == 2);
  const auto rendered = pngs(dir / "first");
  REQUIRE(rendered.size() == 5);

  // The same images into another directory: copied, nothing loaded, the device not used.
  const CommandResult second = render(dir, "second", cache);
  INFO(second.output);
  REQUIRE(second.exit_code == 0);
  CHECK_THAT(second.output, ContainsSubstring("image cache: 5 of 5 image(s) found"));
  CHECK(count(second.output, "(from the image cache)") == 5);
  CHECK(second.output.find("loaded ") == std::string::npos);
  CHECK_THAT(second.output, ContainsSubstring("the device was not used"));
  CHECK(pngs(dir / "second") == rendered);  // byte for byte, text chunks included
  for (const auto& e : fluxbatch::io::read_manifest((dir / "second" / fluxbatch::io::kManifestFileName).string()).entries) {
    CHECK(e.cached);
  }
  const nlohmann::json s = summary_line(dir / "second");
  CHECK(s["cached"] == 5);
  CHECK(s["cache"]["hits"].get<int64_t>() == 5);

  // The same prompts with other seeds: no image to copy, but no prompt to encode either.
  write_job(dir, "", 100, "seeds.json");
  const CommandResult seeds = render(dir, "seeds", cache, "seeds.json");
  INFO(seeds.output);
  REQUIRE(seeds.exit_code == 0);
  // (The item with its own seed 50 is the same image as before.)
  CHECK_THAT(seeds.output, ContainsSubstring("image cache: 1 of 5 image(s) found"));
  CHECK_THAT(seeds.output, ContainsSubstring("2 from the prompt cache"));
  CHECK_THAT(seeds.output, ContainsSubstring("text encoders not loaded (every prompt came from the cache)"));
  CHECK(seeds.output.find("loaded text encoders") == std::string::npos);
  CHECK(count(seeds.output, "loaded transformer and VAE") == 1);
  // ... and the images are exactly those of a render without the cache.
  const CommandResult plain = render(dir, "plain", "", "seeds.json");
  REQUIRE(plain.exit_code == 0);
  CHECK(plain.output.find("cache:") == std::string::npos);
  CHECK(pngs(dir / "seeds") == pngs(dir / "plain"));
  // The job file's "cache" field does the same as --cache; --no-cache turns it off.
  write_job(dir, "\"cache\": \"cache\",");
  const CommandResult field = render(dir, "field", "");
  INFO(field.output);
  CHECK_THAT(field.output, ContainsSubstring("image cache: 5 of 5 image(s) found"));
  const CommandResult off = render(dir, "off", "--no-cache");
  CHECK(off.output.find("image cache") == std::string::npos);
  CHECK(pngs(dir / "off") == rendered);
}

TEST_CASE("damaged cache entries are ignored and made again; the size bound holds", "[cli][cache]") {
  TempDir dir;
  write_job(dir);
  const std::string cache = "--cache " + quote(dir / "cache");
  REQUIRE(render(dir, "first", cache).exit_code == 0);
  const auto rendered = pngs(dir / "first");
  for (const fs::path& e : entries(dir / "cache", "images-v1")) {
    std::string bytes = fluxbatch::test::read_file(e);
    bytes[bytes.size() / 3] ^= 0x55;  // one flipped byte
    fluxbatch::test::write_file(e, bytes);
  }
  const CommandResult again = render(dir, "again", cache);
  INFO(again.output);
  REQUIRE(again.exit_code == 0);
  CHECK_THAT(again.output, ContainsSubstring("ignored and removed a damaged entry"));
  CHECK_THAT(again.output, ContainsSubstring("image cache: 0 of 5 image(s) found"));
  CHECK(pngs(dir / "again") == rendered);
  CHECK(summary_line(dir / "again")["cache"]["corrupt"] == 5);
  CHECK(entries(dir / "cache", "images-v1").size() == 5);  // made again

  // A bound of about three images: the least recently used go; what is left fits.
  const CommandResult small = render(dir, "small", "--cache " + quote(dir / "small-cache") + " --cache-max 40K");
  INFO(small.output);
  REQUIRE(small.exit_code == 0);
  const nlohmann::json s = summary_line(dir / "small");
  CHECK(s["cache"]["evicted"].get<int64_t>() > 0);
  int64_t bytes = 0;
  for (const char* kind : {"images-v1", "embeddings-v1"}) {
    for (const fs::path& e : entries(dir / "small-cache", kind)) bytes += static_cast<int64_t>(fs::file_size(e));
  }
  CHECK(bytes <= 40 * 1024);
  CHECK(bytes > 0);
}

TEST_CASE("two renders share one cache at the same time; a third copies everything", "[cli][cache]") {
  TempDir dir;
  write_job(dir);
  const std::string cache = "--cache " + quote(dir / "cache");
  const std::string exe = "env FLUXBATCH_CACHE_DIR=" + quote(dir / "calibration") + " " + quote(FLUXBATCH_EXE) +
                          " render --device cpu --batch 2 --model " + quote(tiny_model()) + " " +
                          quote(dir / "job.json") + " " + cache + " --out ";
  const CommandResult both = fluxbatch::test::run_command(
      "(" + exe + quote(dir / "a") + " > " + quote(dir / "a.log") + " 2>&1 & pa=$!; " + exe + quote(dir / "b") +
      " > " + quote(dir / "b.log") + " 2>&1 & pb=$!; wait $pa; ra=$?; wait $pb; rb=$?; echo exits $ra $rb)");
  INFO(both.output);
  INFO(fluxbatch::test::read_file(dir / "a.log"));
  INFO(fluxbatch::test::read_file(dir / "b.log"));
  CHECK_THAT(both.output, ContainsSubstring("exits 0 0"));
  const auto a = pngs(dir / "a");
  CHECK(a.size() == 5);
  CHECK(pngs(dir / "b") == a);
  const CommandResult third = render(dir, "c", cache);
  INFO(third.output);
  CHECK_THAT(third.output, ContainsSubstring("image cache: 5 of 5 image(s) found"));
  CHECK(summary_line(dir / "c")["cache"]["corrupt"] == 0);
  CHECK(pngs(dir / "c") == a);
}

TEST_CASE("a render killed mid-job leaves no cache entry that a later one misuses", "[cli][cache]") {
  TempDir dir;
  write_job(dir);
  const std::string cache = "--cache " + quote(dir / "cache");
  REQUIRE(render(dir, "clean", "").exit_code == 0);  // the reference, without a cache
  const auto reference = pngs(dir / "clean");
  for (int delay_ms : {300, 900, 1500}) {
    INFO("killed after " << delay_ms << " ms");
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const std::string cmd = "exec env FLUXBATCH_CACHE_DIR=" + quote(dir / "calibration") + " " + quote(FLUXBATCH_EXE) +
                              " render --device cpu --batch 2 --model " + quote(tiny_model()) + " " +
                              quote(dir / "job.json") + " --out " + quote(dir / "killed") + " " + cache +
                              " --overwrite > /dev/null 2>&1";
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  // Whatever the kills left in the cache, a later job gets exactly the rendered pixels.
  const CommandResult after = render(dir, "after", cache);
  INFO(after.output);
  REQUIRE(after.exit_code == 0);
  CHECK(pngs(dir / "after") == reference);
  CHECK(summary_line(dir / "after")["cache"]["corrupt"] == 0);  // nothing torn under an entry's name
  const CommandResult copied = render(dir, "copied", cache);
  CHECK_THAT(copied.output, ContainsSubstring("image cache: 5 of 5 image(s) found"));
  CHECK(pngs(dir / "copied") == reference);
}
