// Hand-made job items for runner tests (no job file parsed): item `index` of "job.json", writing
// "img-<index>.png", with the given prompt, size and seed; 4 steps, guidance 3.5, 128 T5 tokens.
#pragma once
#include <cstdint>
#include <string>

#include "fluxbatch/job/job_spec.h"

namespace fluxbatch::test {

inline job::RenderItem make_render_item(int64_t index, const std::string& prompt, int width, int height, uint64_t seed) {
  job::RenderItem item;
  item.index = index;
  item.item_index = index;
  item.prompt = prompt;
  item.params.width = width;
  item.params.height = height;
  item.params.steps = 4;
  item.params.guidance = 3.5;
  item.params.seed = seed;
  item.params.max_sequence_length = 128;
  item.file = "img-" + std::to_string(index) + ".png";
  item.location = "job.json:" + std::to_string(index + 1) + ":1";
  return item;
}

// A job of items 0..n-1 made by `make` (output dir "out").
template <typename Make>
job::JobSpec job_of_items(int n, const Make& make) {
  job::JobSpec spec;
  spec.path = "job.json";
  spec.output_dir = "out";
  for (int i = 0; i < n; ++i) spec.items.push_back(make(i));
  return spec;
}

}  // namespace fluxbatch::test
