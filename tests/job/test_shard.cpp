// --shard K/N and --shard auto: parsing, the schedulers' environments, and the partition itself.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fluxbatch/core/error.h"
#include "fluxbatch/job/shard.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::job::parse_shard;
using fluxbatch::job::Shard;

namespace {

fluxbatch::job::EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

const auto kNoEnv = env_of({});

std::string problem(const std::string& text, std::map<std::string, std::string> vars = {}) {
  try {
    parse_shard(text, env_of(std::move(vars)));
  } catch (const fluxbatch::InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("shard K/N takes positions K, K+N, ...", "[job][shard]") {
  const Shard s = parse_shard("2/5", kNoEnv);
  CHECK(s.index == 2);
  CHECK(s.count == 5);
  CHECK_FALSE(s.whole());
  std::vector<int64_t> mine;
  for (int64_t p = 0; p < 17; ++p) {
    if (s.contains(p)) mine.push_back(p);
  }
  CHECK(mine == std::vector<int64_t>{2, 7, 12});
  CHECK(parse_shard("0/1", kNoEnv).whole());
  CHECK(Shard{}.whole());
}

TEST_CASE("the shards of a job hold every image exactly once, evenly", "[job][shard]") {
  for (int64_t n = 1; n <= 9; ++n) {
    for (int64_t images : {0, 1, 5, 64, 1001}) {
      std::vector<int> owners(static_cast<size_t>(images), 0);
      std::vector<int64_t> sizes;
      for (int64_t k = 0; k < n; ++k) {
        const Shard s = parse_shard(std::to_string(k) + "/" + std::to_string(n), kNoEnv);
        int64_t size = 0;
        for (int64_t p = 0; p < images; ++p) {
          if (s.contains(p)) {
            ++owners[static_cast<size_t>(p)];
            ++size;
          }
        }
        sizes.push_back(size);
      }
      for (int o : owners) CHECK(o == 1);
      CHECK(*std::max_element(sizes.begin(), sizes.end()) - *std::min_element(sizes.begin(), sizes.end()) <= 1);
    }
  }
}

TEST_CASE("bad --shard values name the option and what is wrong", "[job][shard]") {
  CHECK_THAT(problem("3/3"), ContainsSubstring("shard 3 is not one of 0 .. 2"));
  CHECK_THAT(problem("1/0"), ContainsSubstring("from 1 to"));
  CHECK_THAT(problem("1-4"), ContainsSubstring("expected K/N"));
  CHECK_THAT(problem("a/b"), ContainsSubstring("expected K/N"));
  CHECK_THAT(problem("-1/4"), ContainsSubstring("expected K/N"));
  CHECK_THAT(problem("/4"), ContainsSubstring("expected K/N"));
  CHECK_THAT(problem("0/2000000"), ContainsSubstring("from 1 to 1000000"));
  CHECK_THAT(problem("auto"), ContainsSubstring("none of SLURM_ARRAY_TASK_ID"));
}

TEST_CASE("shard auto reads Slurm arrays, Slurm tasks and Kubernetes indexed jobs", "[job][shard]") {
  Shard s = parse_shard("auto", env_of({{"SLURM_ARRAY_TASK_ID", "3"}, {"SLURM_ARRAY_TASK_COUNT", "4"},
                                        {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_STEP", "1"},
                                        {"SLURM_PROCID", "0"}}));
  CHECK(s.index == 3);
  CHECK(s.count == 4);
  CHECK_THAT(s.source, ContainsSubstring("SLURM_ARRAY_TASK_ID=3"));
  // --array=1-8 and --array=10-40:10
  s = parse_shard("auto", env_of({{"SLURM_ARRAY_TASK_ID", "1"}, {"SLURM_ARRAY_TASK_COUNT", "8"}, {"SLURM_ARRAY_TASK_MIN", "1"}}));
  CHECK((s.index == 0 && s.count == 8));
  s = parse_shard("auto", env_of({{"SLURM_ARRAY_TASK_ID", "30"}, {"SLURM_ARRAY_TASK_COUNT", "4"},
                                  {"SLURM_ARRAY_TASK_MIN", "10"}, {"SLURM_ARRAY_TASK_STEP", "10"}}));
  CHECK((s.index == 2 && s.count == 4));
  // An array task running a step of 2 tasks: 4 x 2 shards.
  s = parse_shard("auto", env_of({{"SLURM_ARRAY_TASK_ID", "3"}, {"SLURM_ARRAY_TASK_COUNT", "4"},
                                  {"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "1"}}));
  CHECK((s.index == 7 && s.count == 8));
  // srun -n 6
  s = parse_shard("auto", env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}}));
  CHECK((s.index == 5 && s.count == 6));
  // sbatch without an array or srun: the whole job
  CHECK(parse_shard("auto", env_of({{"SLURM_PROCID", "0"}})).whole());
  s = parse_shard("auto", env_of({{"JOB_COMPLETION_INDEX", "6"}, {"FLUXBATCH_SHARDS", "10"}}));
  CHECK((s.index == 6 && s.count == 10));
  CHECK_THAT(s.source, ContainsSubstring("JOB_COMPLETION_INDEX=6"));
}

TEST_CASE("shard auto refuses environments that do not make a shard", "[job][shard]") {
  CHECK_THAT(problem("auto", {{"JOB_COMPLETION_INDEX", "2"}}), ContainsSubstring("FLUXBATCH_SHARDS is not"));
  CHECK_THAT(problem("auto", {{"SLURM_ARRAY_TASK_ID", "7"}}), ContainsSubstring("SLURM_ARRAY_TASK_COUNT is not set"));
  // --array=1,3,7: ids that are not MIN + k * STEP
  CHECK_THAT(problem("auto", {{"SLURM_ARRAY_TASK_ID", "7"}, {"SLURM_ARRAY_TASK_COUNT", "3"}, {"SLURM_ARRAY_TASK_MIN", "1"}}),
             ContainsSubstring("--shard K/N yourself"));
  CHECK_THAT(problem("auto", {{"SLURM_PROCID", "x"}}), ContainsSubstring("not a non-negative integer"));
  CHECK_THAT(problem("auto", {{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}}), ContainsSubstring("shard 4 is not one of"));
  CHECK_THAT(problem("auto", {{"JOB_COMPLETION_INDEX", "1"}, {"FLUXBATCH_SHARDS", "0"}}), ContainsSubstring("from 1 to"));
}
