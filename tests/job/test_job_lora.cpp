// "loras" in job files and --lora defaults: layering, path resolution, checks and the item's JSON.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <string>
#include <vector>

#include "fluxbatch/io/manifest.h"
#include "fluxbatch/io/png_writer.h"
#include "job_test_helpers.h"

using namespace fluxbatch::job;
using Catch::Matchers::ContainsSubstring;
using Lines = std::vector<std::string>;

TEST_CASE("an item's loras replace the defaults', [] removes them, paths are relative to the job file", "[job]") {
  const std::string text = R"({
  "defaults": {"loras": [{"path": "styles/ink.safetensors", "scale": 0.8}, "/abs/detail.safetensors"]},
  "items": [
    "uses the defaults",
    {"prompt": "own list", "loras": [{"path": "../char.safetensors", "scale": -1.5, "strict": false}]},
    {"prompt": "none", "loras": []}
  ]
})";
  LoadOptions options = test::fixed_seed_options();
  LoraRef cli;
  cli.path = "cli.safetensors";
  options.cli_defaults.loras = std::vector<LoraRef>{cli};
  const JobSpec spec = parse_job(text, "jobs/night.json", options);
  REQUIRE(spec.items.size() == 3);
  const auto& first = spec.items[0].params.loras;
  REQUIRE(first.size() == 2);
  CHECK(first[0].path == "jobs/styles/ink.safetensors");
  CHECK(first[0].scale == 0.8);
  CHECK(first[0].strict);
  CHECK(first[0].location == "jobs/night.json:2:26");
  CHECK(first[0].field == "defaults.loras[0]");
  CHECK(first[1].path == "/abs/detail.safetensors");
  CHECK(first[1].scale == 1.0);
  const auto& second = spec.items[1].params.loras;
  REQUIRE(second.size() == 1);
  CHECK(second[0].path == "char.safetensors");
  CHECK(second[0].scale == -1.5);
  CHECK_FALSE(second[0].strict);
  CHECK(second[0].name() == "char");
  CHECK(spec.items[2].params.loras.empty());

  // Without "defaults" loras the command line's apply, as given (relative to the working directory).
  const JobSpec plain = parse_job(R"({"items": ["a"]})", "jobs/x.json", options);
  REQUIRE(plain.items[0].params.loras.size() == 1);
  CHECK(plain.items[0].params.loras[0].path == "cli.safetensors");
}

TEST_CASE("bad loras are reported with line:column and field", "[job]") {
  const std::string text = R"({
  "defaults": {"loras": "ink.safetensors"},
  "items": [
    {"prompt": "a", "loras": [{"path": "x.safetensors", "scale": 11}]},
    {"prompt": "b", "loras": [{"scale": 0.5}, 3, {"path": "y", "strength": 1}]},
    {"prompt": "c", "lora": []}
  ]
})";
  const Lines got = test::problems(text);
  const Lines want = {
      "job.json:2:25 defaults.loras: expected an array of LoRAs ([{\"path\": \"x.safetensors\", \"scale\": 0.8}] or [] "
      "for none), got \"ink.safetensors\"",
      "job.json:4:66 items[0].loras[0].scale: expected a number from -10 to 10, got 11",
      "job.json:5:31 items[1].loras[0]: missing \"path\" (the LoRA's .safetensors file)",
      "job.json:5:47 items[1].loras[1]: expected {\"path\": \"x.safetensors\", \"scale\": 0.8} or a path string, got 3",
      "job.json:5:64 items[1].loras[2].strength: unknown field (did you mean \"scale\"?)",
      "job.json:6:21 items[2].lora: unknown field (did you mean \"loras\"?)",
  };
  CHECK(got == want);
}

TEST_CASE("the item's JSON records its LoRAs only when it has some", "[job]") {
  JobSpec spec = parse_job(R"({"items": [{"prompt": "a", "loras": ["s.safetensors"]}, "b"]})", "j.json",
                           test::fixed_seed_options());
  spec.items[0].params.loras[0].sha256 = std::string(64, 'a');
  CHECK_THAT(item_to_json(spec.items[0]),
             ContainsSubstring(R"("loras":[{"path":"s.safetensors","scale":1.0,"sha256":"aaaa)"));
  CHECK_THAT(item_to_json(spec.items[1]), !ContainsSubstring("loras"));
}

TEST_CASE("same_as: the same content at the same scale, wherever the file is", "[job]") {
  LoraRef a, b;
  a.path = "x/ink.safetensors";
  b.path = "y/ink.safetensors";
  CHECK_FALSE(a.same_as(b));  // content unknown: the path decides
  a.sha256 = b.sha256 = "f00";
  CHECK(a.same_as(b));
  b.scale = 0.5;
  CHECK_FALSE(a.same_as(b));
  b.scale = 1.0;
  b.sha256 = "ba5";
  CHECK_FALSE(a.same_as(b));
}

TEST_CASE("A1111 parameters carry <lora:NAME:SCALE> and Lora hashes; the manifest keeps path, scale, sha256",
          "[job]") {
  fluxbatch::io::InfotextParams p;
  p.prompt = "a fox";
  p.steps = 4;
  p.seed = 1;
  p.width = p.height = 64;
  p.loras = {{"ink", 0.8, "0123456789ab"}, {"detail", -1.0, "ba9876543210"}};
  const std::string text = fluxbatch::io::a1111_parameters(p);
  CHECK_THAT(text, ContainsSubstring("a fox <lora:ink:0.8> <lora:detail:-1>\nSteps: 4"));
  CHECK_THAT(text, ContainsSubstring(R"(, Lora hashes: "ink: 0123456789ab, detail: ba9876543210", Version: )"));

  fluxbatch::io::ManifestEntry e;
  e.file = "a.png";
  e.loras = {{"styles/ink.safetensors", 0.8, "abc"}};
  const auto back = fluxbatch::io::parse_manifest_line(fluxbatch::io::manifest_line(e));
  REQUIRE(back.loras.size() == 1);
  CHECK(back.loras[0].path == "styles/ink.safetensors");
  CHECK(back.loras[0].scale == 0.8);
  CHECK(back.loras[0].sha256 == "abc");
  e.loras.clear();
  CHECK_THAT(fluxbatch::io::manifest_line(e), !ContainsSubstring("loras"));
}
