// The committed corpus of hostile model folders (tests/data/hostile-models/<case>/): each case is a copy
// of a tiny model with files removed, laid over (overlay/), edited (case.json "json") or poisoned
// ("nan"); `fluxbatch render` on it (and `fluxbatch plan`, where case.json says "plan": true) must exit
// with the case's code and print exactly its error line, never a backtrace, and write no image.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_support.h"
#include "fluxbatch/io/safetensors.h"

namespace fs = std::filesystem;
using Catch::Matchers::ContainsSubstring;
using fluxbatch::test::quote;
using fluxbatch::test::TempDir;

namespace {

const fs::path kCorpus = fs::path(FLUXBATCH_TEST_DATA) / "hostile-models";

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Copies `from` into `to`, keeping symbolic links as links (the corpus holds a link loop, which must
// never be followed: only symlink_status is asked).
void lay_over(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    const fs::path target = to / entry.path().filename();
    const fs::file_status status = fs::symlink_status(entry.path());
    if (fs::is_symlink(status)) {
      fs::remove(target);
      fs::copy_symlink(entry.path(), target);
    } else if (fs::is_directory(status)) {
      lay_over(entry.path(), target);
    } else {
      fs::copy_file(entry.path(), target, fs::copy_options::overwrite_existing);
    }
  }
}

// Overwrites the first float32 of tensor `name` in the safetensors file `path` with NaN.
void poison(const fs::path& path, const std::string& name) {
  const auto header = fluxbatch::io::read_safetensors_header(path.string());
  for (const auto& t : header.tensors) {
    if (t.name != name) continue;
    REQUIRE(t.dtype == fluxbatch::io::DType::kF32);
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(header.data_offset + t.begin));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    file.write(reinterpret_cast<const char*>(&nan), sizeof nan);
    REQUIRE(file.good());
    return;
  }
  FAIL("no tensor " << name << " in " << path);
}

// The model folder of `c`, built in `dir`.
fs::path build_model(const fs::path& case_dir, const nlohmann::json& c, const fs::path& dir) {
  const fs::path model = dir / "model";
  const fs::path base = fluxbatch::test::require_generated(fs::path(FLUXBATCH_MODELS_DIR) / c.at("base").get<std::string>());
  fs::copy(base, model, fs::copy_options::recursive);
  for (const auto& path : c.value("remove", nlohmann::json::array())) fs::remove(model / path.get<std::string>());
  if (fs::exists(case_dir / "overlay")) lay_over(case_dir / "overlay", model);
  const nlohmann::json edits = c.value("json", nlohmann::json::object());
  for (const auto& [file, changes] : edits.items()) {
    nlohmann::json json = read_json(model / file);
    json.merge_patch(changes);
    fluxbatch::test::write_file(model / file, json.dump(2));
  }
  for (const auto& p : c.value("nan", nlohmann::json::array())) {
    poison(model / p.at("file").get<std::string>(), p.at("tensor").get<std::string>());
  }
  return model;
}

std::string last_line(const std::string& output) {
  std::string text = output;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
    text.replace(pos, from.size(), to);
  }
}

}  // namespace

TEST_CASE("every hostile model folder of the corpus fails with its exact error line", "[cli][hostile]") {
  std::vector<fs::path> cases;
  for (const auto& entry : fs::directory_iterator(kCorpus)) {
    if (entry.is_directory()) cases.push_back(entry.path());
  }
  std::sort(cases.begin(), cases.end());
  REQUIRE(cases.size() >= 12);
  for (const fs::path& case_dir : cases) {
    const std::string name = case_dir.filename().string();
    INFO("case: " << name);
    const nlohmann::json c = read_json(case_dir / "case.json");
    TempDir dir;
    const fs::path model = build_model(case_dir, c, dir.path());
    nlohmann::json job = c.value("job", nlohmann::json{{"defaults", {{"width", 64}, {"height", 64}, {"steps", 1},
                                                                      {"max_sequence_length", 16}}},
                                                       {"items", {"a red fox"}}});
    job["output"] = {{"dir", "out"}};
    const fs::path job_path = dir / "job.json";
    fluxbatch::test::write_file(job_path, job.dump(2));
    const auto result = fluxbatch::test::fluxbatch_cmd("render " + quote(job_path) + " --model " + quote(model) +
                                                       " --device cpu --batch 1 2>&1");
    INFO(result.output);
    std::string expected = c.at("error").get<std::string>();
    replace_all(expected, "{model}", model.string());
    replace_all(expected, "{job}", job_path.string());
    CHECK(result.exit_code == c.at("exit").get<int>());
    CHECK(last_line(result.output) == expected);
    CHECK_THAT(result.output, !ContainsSubstring("Exception raised from") && !ContainsSubstring("frame #"));
    if (c.value("plan", false)) {
      // `fluxbatch plan` refuses what render would, with the same line.
      const auto plan = fluxbatch::test::fluxbatch_cmd("plan " + quote(job_path) + " --model " + quote(model) +
                                                       " --device cpu 2>&1");
      INFO(plan.output);
      CHECK(plan.exit_code == c.at("exit").get<int>());
      CHECK(last_line(plan.output) == expected);
    }
    if (fs::exists(dir / "out")) {
      for (const auto& e : fs::recursive_directory_iterator(dir / "out")) CHECK(e.path().extension() != ".png");
    }
  }
}
