// Settings presets parsed like job files: values checked per option, relative cache paths, names
// found in search folders with a suggestion when misspelt.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <filesystem>
#include <string>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/settings_file.h"
#include "test_support.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::job::parse_settings;

namespace {

std::string problems(const std::string& text) {
  try {
    parse_settings(text, "p.json");
  } catch (const fluxbatch::job::JobError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a preset's render options and defaults are read and checked", "[job][settings]") {
  const auto s = parse_settings(R"(// a comment
{"description": "d", "render": {"batch": 4, "vram_budget": "7.5G", "cache": "c", "monitor_threshold": 0.5,
 "device": "cuda:1", "progress": "json"}, "defaults": {"steps": 4, "guidance": 0}})",
                                "presets/p.json");
  CHECK(s.name == "p");
  CHECK(s.description == "d");
  CHECK(s.render.at("batch") == "4");
  CHECK(s.render.at("vram_budget") == "7.5G");
  CHECK(s.render.at("cache") == "presets/c");  // relative to the preset
  CHECK(s.render.at("monitor_threshold") == "0.5");
  CHECK(s.render.at("device") == "cuda:1");
  CHECK(*s.defaults.steps == 4);
  CHECK(*s.defaults.guidance == 0.0);
  CHECK(problems(R"({"render": {"batch": "auto"}})").empty());

  CHECK_THAT(problems(R"({"render": {"batch": 0}})"), ContainsSubstring("p.json:1:22 render.batch: expected an integer from 1 to 64"));
  CHECK_THAT(problems(R"({"render": {"batch": "most"}})"), ContainsSubstring("expected \"auto\" or an integer"));
  CHECK_THAT(problems(R"({"render": {"device": "gpu"}})"), ContainsSubstring("expected cuda, cuda:N or cpu"));
  CHECK_THAT(problems(R"({"render": {"vram_reserve": "lots"}})"), ContainsSubstring("expected a size such as 512M"));
  for (const char* ok : {R"("auto")", R"("off")", R"("on")", R"("256")", R"("512px")", "1024"}) {
    CHECK(problems(std::string(R"({"render": {"vae_tiles": )") + ok + "}}").empty());
  }
  CHECK_THAT(problems(R"({"render": {"vae_tiles": "100"}})"),
             ContainsSubstring("render.vae_tiles: expected \"auto\", \"off\", \"on\" or a tile edge in pixels"));
  CHECK_THAT(problems(R"({"render": {"vae_tiles": 8192}})"), ContainsSubstring("expected an integer from 64 to 4096"));
  CHECK_THAT(problems(R"({"render": {"dtype": "bf16", "dtype": "fp32"}})"), ContainsSubstring("duplicate field"));
  CHECK_THAT(problems(R"({"defaults": {"seed": "random"}})"), ContainsSubstring("\"random\" is not allowed in a preset"));
  CHECK_THAT(problems(R"({"defaults": {"width": 100}})"), ContainsSubstring("defaults.width"));
  CHECK_THAT(problems(R"({"render": [1]})"), ContainsSubstring("expected an object of render options"));
  CHECK_THAT(problems(R"([1])"), ContainsSubstring("expected a JSON object"));
  CHECK_THAT(problems(R"({"render": {)"), ContainsSubstring("syntax error"));
}

TEST_CASE("sizes are checked as --vram-budget reads them", "[job][settings]") {
  using fluxbatch::job::size_problem;
  for (const char* ok : {"512M", "1.5G", "2GiB", "4096", "64k", "1TB"}) CHECK(size_problem(ok).empty());
  for (const char* bad : {"", "G", "-1G", "1.2.3G", "5X", "0", "1e9"}) {
    INFO(bad);
    CHECK_FALSE(size_problem(bad).empty());
  }
}

TEST_CASE("a preset name is found in the search folders; a path is taken as a file", "[job][settings]") {
  fluxbatch::test::TempDir dir;
  std::filesystem::create_directories(dir / "a");
  std::filesystem::create_directories(dir / "b");
  fluxbatch::test::write_file(dir / "b" / "fast.json", "{}");
  fluxbatch::test::write_file(dir / "b" / "slow.json", "{}");
  const std::vector<std::string> dirs = {(dir / "a").string(), (dir / "missing").string(), (dir / "b").string()};
  using fluxbatch::job::find_settings;
  CHECK(find_settings("fast", "", dirs, "--config") == (dir / "b" / "fast.json").string());
  CHECK(find_settings("x/y.json", "jobs", dirs, "--config") == "jobs/x/y.json");
  CHECK(find_settings("/abs/y.json", "jobs", dirs, "--config") == "/abs/y.json");
  try {
    find_settings("fsat", "", dirs, "--config");
    FAIL("no exception");
  } catch (const fluxbatch::InputError& e) {
    CHECK_THAT(e.what(), ContainsSubstring("--config: no preset named \"fsat\" (did you mean \"fast\"?)"));
    CHECK_THAT(e.what(), ContainsSubstring("presets there: fast, slow"));
  }
}
