// The progress display's logic with a fake clock: the live line's fields (images, batch and step,
// images per minute, ETA, memory), the periodic log line, the JSON events, and the time per stage.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fluxbatch/runtime/execution/progress.h"
#include "fluxbatch/runtime/execution/stage_clock.h"
#include "render_items.h"

using Catch::Matchers::ContainsSubstring;
using fluxbatch::runtime::BatchEvent;
using fluxbatch::runtime::ImageEvent;
using fluxbatch::runtime::Progress;
using fluxbatch::runtime::ProgressOptions;
using fluxbatch::runtime::ProgressStyle;

namespace {

struct Screen {
  double now = 100.0;
  std::vector<std::string> live, lines, json;
  ProgressOptions options(ProgressStyle style) {
    ProgressOptions o;
    o.style = style;
    o.background = false;
    o.clock = [this] { return now; };
    o.device_bytes = [] { return int64_t{3} << 30; };
    o.live = [this](const std::string& s) { live.push_back(s); };
    o.line = [this](const std::string& s) { lines.push_back(s); };
    o.json = [this](const std::string& s) { json.push_back(s); };
    return o;
  }
};

ImageEvent image(const fluxbatch::job::RenderItem& item, int64_t done, int64_t to_render, bool ok = true) {
  ImageEvent e;
  e.item = &item;
  e.path = "out/" + item.file;
  e.ok = ok;
  e.error = ok ? "" : "out of memory";
  e.done = done;
  e.to_render = to_render;
  return e;
}

}  // namespace

TEST_CASE("the live line shows images, batch step, rate, ETA, memory and elapsed time", "[progress]") {
  Screen screen;
  Progress progress(screen.options(ProgressStyle::kLive));
  progress.job_started({10, 8, 2, 0, 0});
  progress.stage("encode");
  CHECK_THAT(progress.status_text(), ContainsSubstring("0/8 images (0%) | encoding prompts"));
  screen.now += 20.0;
  progress.batch_started(BatchEvent{1, 2, 4, 64, 64, 10, 0.0});
  screen.now += 10.0;
  progress.step(5, 10);
  // Half the steps of a 4-image batch in 10 s: 5 s per image, 8 images left -> 40 s.
  std::string text = progress.status_text();
  CHECK_THAT(text, ContainsSubstring("0/8 images (0%) | batch 1/2 (4 images) step 5/10"));
  CHECK_THAT(text, ContainsSubstring("ETA 0:40"));
  CHECK_THAT(text, ContainsSubstring("mem 3.00 GiB"));
  CHECK_THAT(text, ContainsSubstring("0:30 elapsed"));
  CHECK_FALSE(screen.live.empty());
  CHECK(screen.live.back() == text);

  const auto a = fluxbatch::test::make_render_item(0, "a fox", 64, 64, 1);
  const auto b = fluxbatch::test::make_render_item(1, "a fox", 64, 64, 2);
  screen.now += 14.0;  // 24 s after the first batch began: 2 images -> 12 s each, 5 img/min
  progress.image_finished(image(a, 1, 8));
  progress.image_finished(image(b, 2, 8, false));
  text = progress.status_text();
  CHECK_THAT(text, ContainsSubstring("2/8 images (25%), 1 failed"));
  CHECK_THAT(text, ContainsSubstring("5.0 img/min"));
  CHECK_THAT(text, ContainsSubstring("ETA 1:12"));  // 6 left x 12 s

  // Redraws come with events but at most ten a second; tick() always redraws.
  const size_t drawn = screen.live.size();
  screen.now += 0.5;
  progress.step(6, 10);
  progress.step(7, 10);
  CHECK(screen.live.size() == drawn + 1);
  progress.tick();
  CHECK(screen.live.size() == drawn + 2);

  progress.finish({});
  CHECK(screen.live.back().empty());  // the line is removed at the end
  CHECK(screen.json.empty());
  CHECK(screen.lines.empty());
}

TEST_CASE("without a terminal a progress line comes every interval, and only while there is work", "[progress]") {
  Screen screen;
  Progress progress(screen.options(ProgressStyle::kLines));
  progress.tick();
  CHECK(screen.lines.empty());  // nothing to render (yet)
  progress.job_started({3, 3, 0, 0, 0});
  progress.batch_started(BatchEvent{1, 1, 3, 64, 64, 4, 0.0});
  progress.step(2, 4);
  CHECK(screen.lines.empty());  // events do not write lines
  progress.tick();
  REQUIRE(screen.lines.size() == 1);
  CHECK_THAT(screen.lines[0], ContainsSubstring("progress: 0/3 images (0%) | batch 1/1 (3 images) step 2/4"));
  CHECK(screen.live.empty());
}

TEST_CASE("progress json: one event per line (start, stage, batch, step, image, done)", "[progress]") {
  Screen screen;
  Progress progress(screen.options(ProgressStyle::kJson));
  const auto a = fluxbatch::test::make_render_item(0, "a \"quoted\" fox", 64, 64, 7);
  progress.job_started({2, 1, 1, 0, 0});
  progress.stage("encode");
  progress.stage("");
  progress.batch_started(BatchEvent{1, 1, 1, 64, 64, 2, 0.0});
  progress.step(1, 2);
  progress.step(2, 2);
  progress.image_finished(image(a, 1, 1));
  progress.batch_finished(BatchEvent{1, 1, 1, 64, 64, 2, 1.5});
  fluxbatch::runtime::ProgressDone done;
  done.rendered = 1;
  done.skipped = 1;
  done.wall_s = 3.0;
  done.images_per_hour = 1200.0;
  done.stages = {{"load", 1.0}, {"denoise", 2.0}};
  progress.finish(done);
  progress.step(1, 2);  // nothing after done
  std::vector<std::string> kinds;
  std::vector<nlohmann::json> events;
  for (const std::string& line : screen.json) {
    CHECK(line.find('\n') == std::string::npos);
    events.push_back(nlohmann::json::parse(line));
    kinds.push_back(events.back()["event"].get<std::string>());
  }
  CHECK(kinds == std::vector<std::string>{"start", "stage", "batch", "step", "step", "image", "batch", "done"});
  CHECK(events[0]["to_render"] == 1);
  CHECK(events[0]["skipped"] == 1);
  CHECK(events[1]["stage"] == "encode");
  CHECK(events[2]["state"] == "started");
  CHECK(events[3]["step"] == 1);
  CHECK(events[3]["steps"] == 2);
  CHECK(events[5]["prompt"] == "a \"quoted\" fox");
  CHECK(events[5]["seed"] == 7);
  CHECK(events[5]["status"] == "ok");
  CHECK(events[5]["path"] == "out/img-0.png");
  CHECK(events[6]["state"] == "finished");
  CHECK(events[6]["seconds"] == 1.5);
  CHECK(events[7]["images_per_hour"] == 1200.0);
  CHECK(events[7]["stage_seconds"]["denoise"] == 2.0);
  CHECK(screen.live.empty());
}

TEST_CASE("the stage clock adds up each stage's time and the idle time between", "[progress]") {
  double now = 0.0;
  fluxbatch::runtime::StageClock clock([&] { return now; });
  now = 1.0;
  clock.enter("load");
  now = 3.0;
  clock.enter("denoise");
  now = 10.0;
  clock.enter("");
  now = 10.5;
  clock.enter("load");
  now = 11.0;
  const auto totals = clock.totals();  // the current stage counts up to now
  REQUIRE(totals.size() == 3);
  CHECK(totals[0].stage == "load");
  CHECK(totals[0].seconds == 2.5);
  CHECK(totals[1].stage == "denoise");
  CHECK(totals[1].seconds == 7.0);
  CHECK(totals[2].stage == "other");
  CHECK(totals[2].seconds == 1.5);
  CHECK(clock.since_start() == 11.0);
  CHECK(clock.current() == "load");
  CHECK(fluxbatch::runtime::format_duration(3725.4) == "1:02:05");
  CHECK(fluxbatch::runtime::format_duration(65) == "1:05");
}
