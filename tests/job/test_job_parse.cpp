// Loading valid job files and prompt lists: defaults, expansion, order, paths, JSON output.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <nlohmann/json.hpp>

#include "job_test_helpers.h"

using namespace fluxbatch::job;
using namespace fluxbatch::job::test;
using Catch::Matchers::ContainsSubstring;

namespace {

const RenderItem& by_index(const JobSpec& spec, int64_t index) {
  for (const auto& item : spec.items) {
    if (item.index == index) return item;
  }
  FAIL("no render item with index " << index);
  return spec.items.front();
}

}  // namespace

TEST_CASE("a full JSON job loads with defaults, overrides and expansion", "[job]") {
  const std::string path = data_path("night.json");
  const JobSpec spec = load_job(path, fixed_seed_options());
  CHECK(spec.path == path);
  REQUIRE(spec.model);
  CHECK(*spec.model == std::string(FLUXBATCH_SOURCE_DIR) + "/tests/models/flux-tiny");
  CHECK(spec.output_dir == std::string(FLUXBATCH_TEST_DATA) + "/jobs/renders/night");
  CHECK(spec.name_template == "{index:03}-{slug}-{seed}");
  REQUIRE(spec.items.size() == 8);  // 1 + 3 + 1 + 1 + 2

  const RenderItem& lighthouse = by_index(spec, 0);
  CHECK(lighthouse.prompt == "a lighthouse at night, long exposure");
  CHECK(lighthouse.params.width == 512);
  CHECK(lighthouse.params.height == 512);
  CHECK(lighthouse.params.steps == 20);
  CHECK(lighthouse.params.guidance == 3.5);
  CHECK(lighthouse.params.seed == 100);
  CHECK(lighthouse.params.max_sequence_length == 512);
  CHECK(lighthouse.file == "000-a-lighthouse-at-night-long-exposure-100.png");
  CHECK(lighthouse.location == path + ":6:5");

  const RenderItem& owl = by_index(spec, 5);
  CHECK(owl.item_index == 3);
  CHECK(owl.params.steps == 30);
  CHECK(owl.params.guidance == 4.0);
  CHECK(owl.params.max_sequence_length == 256);
  CHECK(owl.location == path + ":9:5");

  const RenderItem& skyline = by_index(spec, 4);
  CHECK(skyline.params.width == 768);
  CHECK(skyline.name == "skyline-{copy}");
  CHECK(skyline.file == "skyline-0.png");  // the item's name template wins over output.name
}

TEST_CASE("count expands into consecutive seeds and indices", "[job]") {
  const JobSpec spec = load_job(data_path("night.json"), fixed_seed_options());
  for (int copy = 0; copy < 3; ++copy) {
    const RenderItem& fox = by_index(spec, 1 + copy);
    CHECK(fox.item_index == 1);
    CHECK(fox.copy == copy);
    CHECK(fox.params.count == 3);
    CHECK(fox.params.seed == 7u + static_cast<uint64_t>(copy));
    CHECK(fox.file == "00" + std::to_string(1 + copy) + "-a-red-fox-in-the-snow-" +
                          std::to_string(7 + copy) + ".png");
  }
}

TEST_CASE("a random seed is drawn once per item and recorded", "[job]") {
  const JobSpec spec = load_job(data_path("night.json"), fixed_seed_options());
  const RenderItem& first = by_index(spec, 6);
  const RenderItem& second = by_index(spec, 7);
  CHECK(first.seed_drawn);
  CHECK(second.seed_drawn);
  CHECK(first.params.seed == 1000);  // the only draw of this job
  CHECK(second.params.seed == 1001);
  CHECK_FALSE(by_index(spec, 0).seed_drawn);
  const auto recorded = nlohmann::json::parse(item_to_json(second));
  CHECK(recorded["seed"] == 1001);
  CHECK(recorded["seed_drawn"] == true);

  // Without an injected source the draw comes from std::random_device, within 0 .. 2^32-1.
  const JobSpec drawn = parse_job(R"({"items": [{"prompt": "x", "seed": "random", "count": 2}]})",
                                  "j.json", LoadOptions{});
  REQUIRE(drawn.items.size() == 2);
  CHECK(drawn.items[0].params.seed <= kMaxRandomSeed);
  CHECK(drawn.items[1].params.seed == drawn.items[0].params.seed + 1);
}

TEST_CASE("expansion is deterministic", "[job]") {
  const JobSpec a = load_job(data_path("night.json"), fixed_seed_options());
  const JobSpec b = load_job(data_path("night.json"), fixed_seed_options());
  CHECK(job_items_to_json(a) == job_items_to_json(b));
}

TEST_CASE("priority orders rendering, stable within a priority; index keeps file order", "[job]") {
  const JobSpec spec = load_job(data_path("night.json"), fixed_seed_options());
  std::vector<int64_t> order;
  for (const auto& item : spec.items) order.push_back(item.index);
  CHECK(order == std::vector<int64_t>{4, 5, 0, 1, 2, 3, 6, 7});

  const JobSpec mixed = parse_job(R"({"items": [
      {"prompt": "a", "priority": -1}, "b", {"prompt": "c", "priority": 2},
      {"prompt": "d", "priority": -1}, {"prompt": "e", "priority": 2}, "f"]})",
                                  "j.json", {});
  std::string prompts;
  for (const auto& item : mixed.items) prompts += item.prompt;
  CHECK(prompts == "cebfad");
}

TEST_CASE("precedence: item over defaults over command line over built-in", "[job]") {
  LoadOptions options;
  options.cli_defaults.steps = 8;
  options.cli_defaults.width = 256;
  options.cli_defaults.seed = 42;
  options.cli_defaults.guidance = 2.0;
  const JobSpec spec = parse_job(R"({"defaults": {"steps": 12, "seed": 5},
      "items": ["plain", {"prompt": "own", "steps": 3, "width": 320}]})",
                                 "j.json", options);
  REQUIRE(spec.items.size() == 2);
  CHECK(spec.items[0].params.steps == 12);
  CHECK(spec.items[0].params.width == 256);
  CHECK(spec.items[0].params.seed == 5);
  CHECK(spec.items[0].params.guidance == 2.0);
  CHECK(spec.items[0].params.height == 1024);  // built-in default
  CHECK(spec.items[1].params.steps == 3);
  CHECK(spec.items[1].params.width == 320);
}

TEST_CASE("an item without any seed starts at the documented default seed", "[job]") {
  const JobSpec spec = parse_job(R"({"items": [{"prompt": "a", "count": 2}, "b"]})", "j.json", {});
  REQUIRE(spec.items.size() == 3);
  CHECK(spec.items[0].params.seed == kDefaultSeed);
  CHECK(spec.items[1].params.seed == kDefaultSeed + 1);
  CHECK(spec.items[2].params.seed == kDefaultSeed);
}

TEST_CASE("relative model and output paths resolve against the job file's directory", "[job]") {
  const std::string text = R"({"model": "../m/flux", "output": {"dir": "out/a"}, "items": ["x"]})";
  const JobSpec spec = parse_job(text, "jobs/night.json", {});
  CHECK(*spec.model == "m/flux");
  CHECK(spec.output_dir == "jobs/out/a");
  const JobSpec absolute = parse_job(R"({"model": "/abs/m", "items": ["x"]})", "jobs/a.json", {});
  CHECK(*absolute.model == "/abs/m");
  CHECK(absolute.output_dir == "jobs/out");  // kDefaultOutputDir next to the job file

  LoadOptions options;
  options.output_dir = "cli-out";
  CHECK(parse_job(text, "jobs/night.json", options).output_dir == "cli-out");  // --out wins
  CHECK(parse_job(R"({"items": ["x"]})", "here.json", {}).output_dir == "out");
}

TEST_CASE("the --name option overrides output.name but not an item's own name", "[job]") {
  LoadOptions options;
  options.name_template = "cli-{index}";
  const JobSpec spec = parse_job(
      R"({"output": {"name": "file-{index}"}, "items": ["a", {"prompt": "b", "name": "own"}]})",
      "j.json", options);
  CHECK(spec.name_template == "cli-{index}");
  CHECK(spec.items[0].file == "cli-0.png");
  CHECK(spec.items[1].file == "own.png");
}

TEST_CASE("plain prompt lists: one prompt per line, comments and blanks skipped", "[job]") {
  LoadOptions options;
  options.cli_defaults.steps = 4;
  options.cli_defaults.count = 2;
  const std::string path = data_path("prompts.txt");
  const JobSpec spec = load_job(path, options);
  REQUIRE(spec.items.size() == 6);
  CHECK(spec.items[0].prompt == "a watercolor painting of a harbor");
  CHECK(spec.items[2].prompt == "a macro photo of a dew drop on a leaf");  // trimmed
  CHECK(spec.items[4].prompt == "a cozy cabin in the woods, winter");
  CHECK(spec.items[3].params.seed == 1);
  CHECK(spec.items[3].copy == 1);
  CHECK(spec.items[4].item_index == 2);
  CHECK(spec.items[4].params.steps == 4);
  CHECK(spec.items[4].location == path + ":7");
  CHECK(spec.items[5].file == "00005-a-cozy-cabin-in-the-woods-winter-1.png");
}

TEST_CASE("prompt lists accept CRLF, a BOM and '#' inside a prompt", "[job]") {
  const JobSpec spec = parse_job("\xEF\xBB\xBF" "first\r\n  # note\r\nissue #2 fixed\r\n", "p.txt", {});
  REQUIRE(spec.items.size() == 2);
  CHECK(spec.items[0].prompt == "first");
  CHECK(spec.items[1].prompt == "issue #2 fixed");
  CHECK(spec.items[1].location == "p.txt:3");
}

TEST_CASE("format detection: extension first, then a leading '{'", "[job]") {
  CHECK(parse_job(R"({"items": ["a"]})", "job.jsonc", {}).items.size() == 1);
  CHECK(parse_job("{braces} in a prompt\n", "list.txt", {}).items[0].prompt == "{braces} in a prompt");
  CHECK(parse_job("a\nb\n", "noext", {}).items.size() == 2);
  CHECK(parse_job(R"({"items": ["a"]})", "j.txt", {}, JobFormat::kJson).items.size() == 1);
}

TEST_CASE("JSON comments, escapes and UTF-8 prompts", "[job]") {
  const JobSpec spec = load_job(data_path("commented.json"), {});
  REQUIRE(spec.items.size() == 2);
  CHECK(spec.items[1].params.seed == 3);
  CHECK(spec.items[1].location == data_path("commented.json") + ":7:5");

  const JobSpec escaped = parse_job(
      R"({"items": [{"pr\u006fmpt": "caf\u00e9 \ud83d\ude00 \"quoted\"\nline two"}, "日本の庭園"]})",
      "j.json", {});
  CHECK(escaped.items[0].prompt == "caf\xC3\xA9 \xF0\x9F\x98\x80 \"quoted\"\nline two");
  CHECK(escaped.items[1].prompt == "日本の庭園");
  CHECK(escaped.items[1].file == "00001-prompt-0.png");  // nothing ASCII to slug
}

TEST_CASE("item_to_json and job_items_to_json carry every resolved field", "[job]") {
  const JobSpec spec = load_job(data_path("night.json"), fixed_seed_options());
  const std::string line = item_to_json(spec.items.front());
  CHECK(line.find('\n') == std::string::npos);
  const auto item = nlohmann::json::parse(line);
  CHECK(item["index"] == 4);
  CHECK(item["item"] == 2);
  CHECK(item["copy"] == 0);
  CHECK(item["priority"] == 5);
  CHECK(item["name"] == "skyline-{copy}");
  CHECK(item["prompt"] == "city skyline, neon rain");
  CHECK(item["width"] == 768);
  CHECK(item["height"] == 512);
  CHECK(item["steps"] == 20);
  CHECK(item["guidance"] == 3.5);
  CHECK(item["seed"] == 100);
  CHECK(item["count"] == 1);
  CHECK(item["max_sequence_length"] == 512);
  CHECK(item["file"] == "skyline-0.png");
  CHECK_THAT(line, ContainsSubstring(R"("index":4,"item":2,"copy":0)"));  // documented key order

  const auto job = nlohmann::json::parse(job_items_to_json(spec, 2));
  CHECK(job["path"] == data_path("night.json"));
  CHECK(job["count"] == 8);
  CHECK(job["name_template"] == "{index:03}-{slug}-{seed}");
  REQUIRE(job["items"].size() == 8);
  CHECK(job["items"][7]["seed_drawn"] == true);
  CHECK(nlohmann::json::parse(job_items_to_json(parse_job("a\n", "p.txt", {})))["model"].is_null());
}

TEST_CASE("large seeds and the widest settings are accepted", "[job]") {
  const JobSpec spec = parse_job(R"({"items": [{"prompt": "x", "seed": 18446744073709551614,
      "count": 2, "width": 4096, "height": 64, "steps": 200, "guidance": 100,
      "max_sequence_length": 1, "priority": -1000000}]})",
                                 "j.json", {});
  REQUIRE(spec.items.size() == 2);
  CHECK(spec.items[1].params.seed == 18446744073709551615ull);
  CHECK(spec.items[1].file == "00001-x-18446744073709551615.png");
  CHECK(parse_job(R"({"items": [{"prompt": "x", "seed": -0}]})", "j.json", {}).items[0].params.seed == 0);
}
