// Every kind of bad job input gives a diagnostic naming file:line:col and the field.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include "job_test_helpers.h"

using namespace fluxbatch::job;
using namespace fluxbatch::job::test;
using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::StartsWith;
using Lines = std::vector<std::string>;

TEST_CASE("every field problem of a file is reported, each with line:column and field", "[job]") {
  const std::string path = data_path("bad_fields.json");
  try {
    load_job(path, {});
    FAIL("bad_fields.json loaded");
  } catch (const JobError& error) {
    const Lines expected = {
        path + ":2:3 modle: unknown field (did you mean \"model\"?)",
        path + ":3:21 output.dir: expected a non-empty path string, got \"\"",
        path + ":3:33 output.name: unknown placeholder {sed} (did you mean {seed}?); known: "
               "{index}, {item}, {copy}, {seed}, {width}, {height}, {steps}, {slug}",
        path + ":4:25 defaults.width: expected a multiple of 16 from 64 to 4096, got 1000",
        path + ":4:40 defaults.steps: expected an integer from 1 to 200, got 0",
        path + ":4:55 defaults.guidance: expected a number from 0 to 100, got \"high\"",
        path + ":7:16 items[1].prompt: must not be empty",
        path + ":7:20 items[1].stpes: unknown field (did you mean \"steps\"?)",
        path + ":8:32 items[2].count: expected an integer from 1 to 10000, got 0",
        path + ":8:43 items[2].seed: expected an integer from 0 to 18446744073709551615 or "
               "\"random\", got -1",
        path + ":8:57 items[2].height: expected a multiple of 16 from 64 to 4096, got 8192",
        path + ":9:5 items[3]: expected a prompt string or an object with \"prompt\", got 42",
        path + ":10:5 items[4]: missing \"prompt\"",
        path + ":11:46 items[5].max_sequence_length: expected an integer from 1 to 512, got 1024",
        path + ":11:64 items[5].priority: expected an integer from -1000000 to 1000000, got 1.5",
    };
    Lines actual;
    for (const auto& diagnostic : error.diagnostics()) actual.push_back(diagnostic.to_string());
    CHECK(actual == expected);
    // what() lists the same lines; JobError is an InputError (exit code 2).
    std::string joined;
    for (const auto& line : expected) joined += (joined.empty() ? "" : "\n") + line;
    CHECK(std::string(error.what()) == joined);
    const fluxbatch::InputError& as_input = error;
    CHECK_THAT(as_input.what(), StartsWith(path + ":2:3 modle"));
    const Diagnostic& steps = error.diagnostics()[4];
    CHECK(steps.file == path);
    CHECK(steps.line == 4);
    CHECK(steps.column == 40);
    CHECK(steps.field == "defaults.steps");
    CHECK(steps.message == "expected an integer from 1 to 200, got 0");
  }
}

TEST_CASE("the documented example message", "[job]") {
  const std::string text =
      "{\"items\": [\n\"a\",\n\"b\",\n\"c\",\n{\"prompt\": \"d\",\n"
      "  \"width\": 512,\n\n\n\n\n\n\n\n           \"steps\": 500}]}";
  CHECK(problems(text, "jobs/night.json") ==
        Lines{"jobs/night.json:14:21 items[3].steps: expected an integer from 1 to 200, got 500"});
}

TEST_CASE("syntax errors give line:column", "[job]") {
  const std::string path = data_path("syntax_error.json");
  CHECK(problems(read_text(path), path) ==
        Lines{path + ":5:12: syntax error while parsing array: unexpected string literal; "
                     "expected ']'"});
  CHECK(problems("{\"items\": [\"a\",]}") ==
        Lines{"job.json:1:16: syntax error while parsing value: unexpected ']'; expected '[', '{', "
              "or a literal"});
  CHECK_THAT(problems("{\"items\": [\"a\"")[0], StartsWith("job.json:1:15: syntax error"));
  CHECK_THAT(problems("{\"items\": [tru]}")[0],
             StartsWith("job.json:1:15: syntax error while parsing value: invalid literal"));
  CHECK_THAT(problems("{\"items\": [\"a\nb\"]}")[0],
             StartsWith("job.json:1:14: syntax error while parsing value: invalid string: control "
                        "character U+000A (LF) must be escaped"));
  CHECK_THAT(problems("{\"items\": [\"\\ud800\"]}")[0], StartsWith("job.json:1:19: syntax error"));
  CHECK_THAT(problems("{\"items\": [1e999]}")[0], StartsWith("job.json: syntax error"));
  CHECK_THAT(problems("{} {}")[0], StartsWith("job.json:1:4: syntax error"));
  CHECK_THAT(problems("/* never closed {\"items\": [\"a\"]}")[0], StartsWith("job.json:1:"));
}

TEST_CASE("non-object roots, empty jobs and missing items", "[job]") {
  CHECK(problems(R"(["a", "b"])") ==
        Lines{"job.json:1:1: expected a JSON object with an \"items\" array, got an array"});
  CHECK(problems("  \"a prompt\"", "j.json") ==
        Lines{"j.json:1:3: expected a JSON object with an \"items\" array, got \"a prompt\""});
  CHECK(problems("null") == Lines{"job.json:1:1: expected a JSON object with an \"items\" array, got null"});
  CHECK(problems("") == Lines{"job.json: the file is empty"});
  CHECK(problems(" \n\t\n") == Lines{"job.json: the file is empty"});
  CHECK(problems("", "p.txt") == Lines{"p.txt: the file is empty"});
  CHECK(problems("# only\n\n# comments\n", "p.txt") ==
        Lines{"p.txt: no prompts: the file has only blank lines and '#' comments"});
  CHECK(problems("{}") == Lines{"job.json:1:1 items: missing; a job needs an \"items\" array of prompts"});
  CHECK(problems(R"({"items": []})") == Lines{"job.json:1:11 items: the job has no items"});
  CHECK(problems(R"({"items": {"a": 1}})") ==
        Lines{"job.json:1:11 items: expected an array of prompts or objects, got an object"});
}

TEST_CASE("wrong types name the field and what was found", "[job]") {
  CHECK(problems(R"({"model": 3, "output": [], "defaults": "x", "items": [{"prompt": ["a"]}]})") ==
        Lines{"job.json:1:11 model: expected a non-empty path string, got 3",
              "job.json:1:24 output: expected an object with \"dir\" and/or \"name\", got an array",
              "job.json:1:40 defaults: expected an object of settings, got \"x\"",
              "job.json:1:66 items[0].prompt: expected a string, got an array"});
  CHECK(problems(R"({"items": [{"prompt": "a", "steps": "20", "width": 512.0, "seed": 1.5,
      "guidance": true, "name": 7, "count": null}]})") ==
        Lines{"job.json:1:37 items[0].steps: expected an integer from 1 to 200, got \"20\"",
              "job.json:1:52 items[0].width: expected a multiple of 16 from 64 to 4096, got 512.0",
              "job.json:1:67 items[0].seed: expected an integer from 0 to 18446744073709551615 or "
              "\"random\", got 1.5",
              "job.json:2:19 items[0].guidance: expected a number from 0 to 100, got true",
              "job.json:2:33 items[0].name: expected a file-name template string, got 7",
              "job.json:2:45 items[0].count: expected an integer from 1 to 10000, got null"});
  CHECK(problems(R"({"items": [{"prompt": "a", "seed": "Random"}]})") ==
        Lines{"job.json:1:36 items[0].seed: expected an integer from 0 to 18446744073709551615 or "
              "\"random\", got \"Random\""});
  CHECK(problems(R"({"items": [{"prompt": "a", "seed": 18446744073709551616}]})")[0] ==
        "job.json:1:36 items[0].seed: expected an integer from 0 to 18446744073709551615 or "
        "\"random\", got 1.8446744073709552e+19");
  CHECK(problems(R"({"items": [{"prompt": "a", "guidance": -0.5, "width": 1000, "height": 48}]})") ==
        Lines{"job.json:1:40 items[0].guidance: expected a number from 0 to 100, got -0.5",
              "job.json:1:55 items[0].width: expected a multiple of 16 from 64 to 4096, got 1000",
              "job.json:1:71 items[0].height: expected a multiple of 16 from 64 to 4096, got 48"});
}

TEST_CASE("unknown fields are errors with the closest known field suggested", "[job]") {
  CHECK(problems(R"({"defualts": {}, "items": ["a"]})") ==
        Lines{"job.json:1:2 defualts: unknown field (did you mean \"defaults\"?)"});
  CHECK(problems(R"({"items": [{"prompt": "a", "Steps": 3, "guidance_scale": 2, "sead": 1}]})") ==
        Lines{"job.json:1:28 items[0].Steps: unknown field (did you mean \"steps\"?)",
              "job.json:1:40 items[0].guidance_scale: unknown field (did you mean \"guidance\"?)",
              "job.json:1:61 items[0].sead: unknown field (did you mean \"seed\"?)"});
  CHECK(problems(R"({"width": 512, "items": ["a"]})") ==
        Lines{"job.json:1:2 width: unknown field here; \"width\" belongs in \"defaults\" or in an item"});
  CHECK(problems(R"({"defaults": {"prompt": "x"}, "items": ["a"]})") ==
        Lines{"job.json:1:15 defaults.prompt: unknown field here; \"prompt\" belongs in an item"});
  CHECK(problems(R"({"output": {"path": "x"}, "items": ["a"]})") ==
        Lines{"job.json:1:13 output.path: unknown field; known fields here: dir, name"});
  CHECK(problems(R"({"items": [{"prompt": "a", "my key": 1}]})") ==
        Lines{"job.json:1:28 items[0][\"my key\"]: unknown field; known fields here: prompt, name, "
              "priority, width, height, steps, guidance, seed, count, max_sequence_length, loras"});
}

TEST_CASE("duplicate fields are errors", "[job]") {
  CHECK(problems(R"({"items": [{"prompt": "a", "steps": 4, "steps": 5}]})") ==
        Lines{"job.json:1:40 items[0].steps: duplicate field; each field may appear once"});
  CHECK(problems(R"({"items": ["a"], "items": ["b"]})") ==
        Lines{"job.json:1:18 items: duplicate field; each field may appear once"});
}

TEST_CASE("prompts must be valid UTF-8 without control characters", "[job]") {
  const std::string path = data_path("bad_utf8.txt");
  try {
    load_job(path, {});
    FAIL("bad_utf8.txt loaded");
  } catch (const JobError& error) {
    CHECK(std::string(error.what()) ==
          path + ":2: the prompt is not valid UTF-8 (bad byte 0xFF at byte 1)\n" + path +
              ":5: the prompt is not valid UTF-8 (bad byte 0xC3 at byte 5)");
    CHECK(error.diagnostics()[1].line == 5);
    CHECK(error.diagnostics()[1].column == 0);
  }
  // JSON text must be UTF-8 as a whole: the first bad byte is a syntax-level error.
  CHECK(problems("{\"items\": [\"caf\xC3\xA9\",\n \"bad \xC0\xAF\"]}") ==
        Lines{"job.json:2:7: invalid UTF-8 (byte 0xC0); job files must be UTF-8"});
  CHECK(problems("{\"items\": [\"\xED\xA0\x80\"]}") ==
        Lines{"job.json:1:13: invalid UTF-8 (byte 0xED); job files must be UTF-8"});
  CHECK(problems(R"({"items": ["a\u0000b", {"prompt": "bell \u0007"}, "  "]})") ==
        Lines{"job.json:1:12 items[0]: the prompt contains the control character U+0000 (tab and "
              "newline are the only ones allowed)",
              "job.json:1:35 items[1].prompt: contains the control character U+0007 (tab and "
              "newline are the only ones allowed)",
              "job.json:1:51 items[2]: the prompt must not be empty"});
  CHECK(problems("ok\nvertical\x0Btab\n", "p.txt") ==
        Lines{"p.txt:2: the prompt contains the control character U+000B (tab and newline are the "
              "only ones allowed)"});
  const std::string long_prompt(kMaxPromptBytes + 1, 'a');
  CHECK(problems(long_prompt + "\n", "p.txt") ==
        Lines{"p.txt:1: the prompt is 65537 bytes long; the limit is 65536"});
}

TEST_CASE("name template problems are reported at the template", "[job]") {
  const std::string path = data_path("escape.json");
  CHECK(problems(read_text(path), path) ==
        Lines{path + ":2:22 output.name: must stay inside the output directory ('..' is not allowed)",
              path + ":4:33 items[0].name: must be a relative path inside the output directory, "
                     "not absolute",
              path + ":5:33 items[1].name: must stay inside the output directory ('..' is not "
                     "allowed)"});
  CHECK(problems(R"({"output": {"name": "{index:5}"}, "items": ["a"]})") ==
        Lines{"job.json:1:21 output.name: bad format in {index:5}: use {index:05} to zero-pad to 5 "
              "digits (1 to 20)"});
  CHECK(problems(R"({"output": {"name": ""}, "items": ["a"]})") ==
        Lines{"job.json:1:21 output.name: must not be empty"});
}

TEST_CASE("two items writing the same file is an error naming both", "[job]") {
  const std::string path = data_path("collision.json");
  CHECK(problems(read_text(path), path) ==
        Lines{path + ":5:5 items[1]: output file \"a-cat-on-a-mat.png\" is also written by items[0]",
              path + ":6:5 items[2]: output file \"a-dog.png\" of copy 1 is also written by copy 0 of "
                     "this item (use {copy}, {seed} or {index} in the name)"});
  CHECK(problems("a cat\nA CAT\n", "p.txt", [] {
          LoadOptions options;
          options.name_template = "{slug}";
          return options;
        }()) == Lines{"p.txt:2: output file \"a-cat.png\" is also written by line 1"});
  CHECK(problems(R"({"items": [{"prompt": "a", "name": "x"}, {"prompt": "b", "name": "x.png"}]})") ==
        Lines{"job.json:1:42 items[1]: output file \"x.png\" is also written by items[0]"});
}

TEST_CASE("command-line values are checked too", "[job]") {
  LoadOptions options;
  options.cli_defaults.steps = 0;
  options.cli_defaults.width = 100;
  options.cli_defaults.max_sequence_length = 600;
  options.cli_defaults.guidance = 101;
  options.output_dir = "";
  options.name_template = "{nope}";
  CHECK(problems("a prompt\n", "p.txt", options) ==
        Lines{"--width: expected a multiple of 16 from 64 to 4096, got 100",
              "--steps: expected an integer from 1 to 200, got 0",
              "--max-sequence-length: expected an integer from 1 to 512, got 600",
              "--guidance: expected a number from 0 to 100, got 101.0",
              "--out: must not be empty",
              "--name: unknown placeholder {nope}; known: {index}, {item}, {copy}, {seed}, {width}, "
              "{height}, {steps}, {slug}"});
}

TEST_CASE("unreadable paths give one clean diagnostic", "[job]") {
  CHECK(problems_of_file("/nonexistent/dir/job.json") ==
        Lines{"/nonexistent/dir/job.json: cannot read the job file: no such file"});
  CHECK(problems_of_file(std::string(FLUXBATCH_TEST_DATA)) ==
        Lines{std::string(FLUXBATCH_TEST_DATA) + ": is a directory, not a job file"});
}

TEST_CASE("at most kMaxDiagnostics problems are listed, the rest counted", "[job]") {
  std::string text = "{\"items\": [";
  for (int i = 0; i < 250; ++i) text += std::string(i ? "," : "") + "{\"prompt\": \"\"}";
  text += "]}";
  const Lines lines = problems(text);
  REQUIRE(lines.size() == kMaxDiagnostics + 1);
  CHECK(lines.front() == "job.json:1:23 items[0].prompt: must not be empty");
  CHECK(lines.back() == "job.json: ... and 50 more problems (only the first 200 are listed)");
}
