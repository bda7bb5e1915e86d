#include "fluxbatch/runtime/flux_generator.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/sampling/postprocess.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <utility>

namespace fluxbatch::runtime {

// Least-recently-used prompt embeddings, keyed by (prompt, max_sequence_length).
struct FluxGenerator::Cache {
  using Key = std::pair<std::string, int>;
  struct Entry {
    at::Tensor prompt_embeds;  // [1, L, D]
    at::Tensor pooled;         // [1, P]
  };
  size_t capacity = 64;
  std::list<std::pair<Key, Entry>> order;  // most recent first
  std::map<Key, std::list<std::pair<Key, Entry>>::iterator> index;

  const Entry* find(const Key& key) {
    auto it = index.find(key);
    if (it == index.end()) return nullptr;
    order.splice(order.begin(), order, it->second);
    return &it->second->second;
  }
  void put(const Key& key, Entry entry) {
    if (capacity == 0 || index.count(key)) return;
    order.emplace_front(key, std::move(entry));
    index[key] = order.begin();
    while (order.size() > capacity) {
      index.erase(order.back().first);
      order.pop_back();
    }
  }
};

PipelineOptions pipeline_options(const GeneratorOptions& options) {
  PipelineOptions out;
  out.device = options.device;
  out.dtype = options.dtype.value_or(options.device.is_cuda() ? c10::kBFloat16 : c10::kFloat);
  out.offload = options.offload;
  out.keep_text_encoders = options.keep_text_encoders;
  out.quantize_nf4 = options.quantize_nf4;
  out.quantize_t5_nf4 = options.quantize_nf4;
  if (out.dtype == c10::kHalf) {
    log::warn("fp16: FLUX.1 activations can overflow in float16; bf16 is the reference dtype");
  }
  return out;
}

FluxGenerator::FluxGenerator(const std::string& model_path, const GeneratorOptions& options)
    : options_(options),
      pipeline_(std::make_unique<FluxPipeline>(model_path, pipeline_options(options))),
      cache_(std::make_unique<Cache>()) {
  cache_->capacity = options.prompt_cache_size;
}

FluxGenerator::~FluxGenerator() = default;

std::string FluxGenerator::model_description() const { return pipeline_->description(); }

PromptEmbeddings FluxGenerator::embeddings_for(const std::vector<job::RenderItem>& batch, int max_sequence_length) {
  // Entries are copied out of the cache first: encoding the missing prompts may evict them.
  std::map<std::string, Cache::Entry> rows;
  std::vector<std::string> missing;
  for (const auto& item : batch) {
    if (rows.count(item.prompt)) continue;
    if (const Cache::Entry* cached = cache_->find({item.prompt, max_sequence_length})) {
      rows.emplace(item.prompt, *cached);
    } else if (std::find(missing.begin(), missing.end(), item.prompt) == missing.end()) {
      missing.push_back(item.prompt);
    }
  }
  if (!missing.empty()) {
    const PromptEmbeddings encoded = pipeline_->encode_prompts(missing, max_sequence_length);
    for (size_t i = 0; i < missing.size(); ++i) {
      const auto row = static_cast<int64_t>(i);
      const Cache::Entry entry{encoded.prompt_embeds.narrow(0, row, 1).clone(), encoded.pooled.narrow(0, row, 1).clone()};
      rows.emplace(missing[i], entry);
      cache_->put({missing[i], max_sequence_length}, entry);
    }
  }
  std::vector<at::Tensor> states, pooled;
  for (const auto& item : batch) {
    const Cache::Entry& entry = rows.at(item.prompt);
    states.push_back(entry.prompt_embeds);
    pooled.push_back(entry.pooled);
  }
  return PromptEmbeddings{at::cat(states, 0), at::cat(pooled, 0)};
}

std::vector<Image> FluxGenerator::generate(const std::vector<job::RenderItem>& batch) {
  if (batch.empty()) return {};
  const job::RenderParams& first = batch.front().params;
  DenoiseRequest request;
  request.width = first.width;
  request.height = first.height;
  request.steps = first.steps;
  for (const auto& item : batch) {
    const job::RenderParams& p = item.params;
    FLUXBATCH_CHECK(p.width == first.width && p.height == first.height && p.steps == first.steps &&
                        p.max_sequence_length == first.max_sequence_length,
                    InputError,
                    "a batch must share width, height, steps and max_sequence_length (" + item.location + ")");
    request.seeds.push_back(p.seed);
    request.guidance.push_back(p.guidance);
  }

  const c10::Device device = pipeline_->options().device;
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [&](Clock::time_point t) {
    synchronize(device);
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  reset_peak_memory(device);
  const auto stage = [&](const char* name) {
    if (options_.on_stage) options_.on_stage(name);
  };
  stage("encode");
  auto t0 = Clock::now();
  const PromptEmbeddings embeddings = embeddings_for(batch, first.max_sequence_length);
  const double encode_s = seconds_since(t0);
  const int steps = request.steps;
  const auto on_step = [&](int step, const at::Tensor&) {
    if (options_.on_step) {
      options_.on_step(step + 1, steps);
    } else {
      log::debug("step " + std::to_string(step + 1) + "/" + std::to_string(steps));
    }
  };
  stage("denoise");
  t0 = Clock::now();
  const at::Tensor latents = pipeline_->denoise(embeddings, request, on_step);
  const double denoise_s = seconds_since(t0);
  const c10::InferenceMode inference;
  stage("decode");
  t0 = Clock::now();
  const at::Tensor pixels = sampling::postprocess_uint8(pipeline_->decode(latents, request.width, request.height));
  const double decode_s = seconds_since(t0);
  char line[256];
  std::snprintf(line, sizeof line,
                "batch of %zu at %dx%d: encode %.2f s, denoise %.2f s (%.1f ms/step, %d steps), decode %.2f s, "
                "peak allocated %.2f GiB",
                batch.size(), request.width, request.height, encode_s, denoise_s, 1000.0 * denoise_s / steps, steps,
                decode_s, static_cast<double>(peak_allocated_bytes(device)) / (1 << 30));
  stage("");
  log::info(options_.memory_note ? line + (", " + options_.memory_note(batch)) : std::string(line));

  // pixels: [B, H, W, 3] uint8, contiguous
  std::vector<Image> images;
  const int64_t height = pixels.size(1), width = pixels.size(2);
  const auto bytes = static_cast<size_t>(height * width * 3);
  for (int64_t b = 0; b < pixels.size(0); ++b) {
    Image image;
    image.width = static_cast<int>(width);
    image.height = static_cast<int>(height);
    image.rgb.resize(bytes);
    std::memcpy(image.rgb.data(), pixels[b].data_ptr<uint8_t>(), bytes);
    images.push_back(std::move(image));
  }
  return images;
}

std::unique_ptr<ImageGenerator> make_flux_generator(const std::string& model_path, const GeneratorOptions& options) {
  return std::make_unique<FluxGenerator>(model_path, options);
}

}  // namespace fluxbatch::runtime
