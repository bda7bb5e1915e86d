#include "fluxbatch/runtime/execution/flux_generator.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/stage_error.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/oom.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/sampling/postprocess.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <optional>
#include <utility>

namespace fluxbatch::runtime {

// Least-recently-used prompt embeddings, keyed by (prompt, max_sequence_length).
struct FluxGenerator::Cache {
  using Key = FluxGenerator::Key;
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

// Embeddings encoded ahead by prepare(), in host memory, until every item using them is rendered.
struct FluxGenerator::Prepared {
  struct Entry {
    at::Tensor prompt_embeds;  // [1, L, D] on the CPU
    at::Tensor pooled;         // [1, P] on the CPU
    int64_t bytes = 0;
  };
  int64_t limit = 0;
  int64_t bytes = 0;               // of `entries`
  std::map<Key, Entry> entries;
  std::map<Key, int64_t> uses;     // items of the job not yet rendered, per key
  std::vector<Key> pending;        // keys not encoded yet, in render order of their first item
};

PipelineOptions pipeline_options(const GeneratorOptions& options) {
  PipelineOptions out;
  out.device = options.device;
  out.dtype = options.dtype.value_or(options.device.is_cuda() ? c10::kBFloat16 : c10::kFloat);
  out.residency = options.residency;
  out.resident_blocks = options.resident_blocks;
  out.t5_resident_blocks = options.t5_resident_blocks;
  out.stream_slots = options.stream_slots;
  out.keep_text_encoders = options.keep_text_encoders;
  out.quantize_nf4 = options.quantize_nf4;
  out.quantize_t5_nf4 = options.quantize_nf4;
  out.cuda_graphs = options.cuda_graphs;
  out.loras = options.loras;
  out.merge_loras = options.merge_loras;
  out.compute_fp8 = options.compute_fp8;
  out.attention_fp8 = options.attention_fp8;
  out.fp8_from_nf4 = options.fp8_from_nf4;
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

namespace {

using Clock = std::chrono::steady_clock;

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

void FluxGenerator::prepare(const std::vector<const job::RenderItem*>& items) {
  prepared_ = std::make_unique<Prepared>();
  prepared_->limit = options_.prepared_embedding_bytes;
  for (const job::RenderItem* item : items) {
    const Key key = key_of(*item, item->params.max_sequence_length);
    if (prepared_->uses[key]++ == 0) prepared_->pending.push_back(key);
  }
  if (prepared_->pending.empty()) return;
  if (options_.on_stage) options_.on_stage("encode");
  try {
    encode_window({});
  } catch (const std::exception& e) {
    if (is_out_of_memory(e)) throw;
    throw_stage_error(e, "encode stage (" + std::to_string(prepared_->pending.size()) + " prompt(s) to encode)");
  }
  if (options_.on_stage) options_.on_stage("");
}

FluxGenerator::Key FluxGenerator::key_of(const job::RenderItem& item, int max_sequence_length) const {
  Key key{item.prompt, max_sequence_length, {}};
  if (options_.loras) key.text_loras = options_.loras->set_for(item.params.loras, models::lora::LoraComponent::kTextEncoder);
  return key;
}

PromptEmbeddings FluxGenerator::encode(const std::vector<std::string>& prompts, int max_sequence_length,
                                       const nn::LoraSet& text_loras) {
  for (;;) {
    try {
      PromptEmbeddings out = pipeline_->encode_prompts(prompts, max_sequence_length, text_loras);
      stats_.prompts_encoded += static_cast<int64_t>(prompts.size());
      return out;
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      // Streamed T5: fewer resident blocks first. It costs bus time only and keeps the device's
      // arithmetic, where the CPU's would change the images.
      if (const std::optional<int> resident = pipeline_->stream_more_t5_blocks()) {
        log::warn("text encoders ran out of device memory (" + exception_message(e) + "); T5 keeps " +
                  std::to_string(*resident) + " block(s) resident now and streams the rest");
        ++stats_.t5_stream_retries;  // (the pipeline gave the device copies' blocks back)
        continue;
      }
      if (pipeline_->text_encoders_on_cpu()) throw;
      log::warn("text encoders ran out of device memory (" + exception_message(e) +
                "); they run on the CPU from now on");
      break;
    }
  }
  // The failed attempt's tensors are gone with its frames; give their blocks back first.
  release_cached_memory();
  pipeline_->move_text_encoders_to_cpu();
  ++stats_.cpu_encode_fallbacks;
  PromptEmbeddings out = pipeline_->encode_prompts(prompts, max_sequence_length, text_loras);
  stats_.prompts_encoded += static_cast<int64_t>(prompts.size());
  return out;
}

// Loads CLIP and T5 now, under stage "load", so a stage's time and peak are its own. Out of memory
// is left to encode(), which tries again and falls back to the CPU.
void FluxGenerator::load_text_encoders() {
  if (pipeline_->text_encoders_loaded()) return;
  if (options_.on_stage) options_.on_stage("load");
  try {
    pipeline_->load_text_encoders();
  } catch (const std::exception& e) {
    if (!is_out_of_memory(e)) throw;
    release_cached_memory();
  }
  if (options_.on_stage) options_.on_stage("encode");  // called from within the encode stage
}

// The encode stage: `needed` first (whatever their size), then pending prompts in render order
// while the host bytes stay within the limit, one prompt at a time, each from the prompt cache when
// it has it; the text encoders load at the first prompt that must be encoded, and go at the end.
void FluxGenerator::encode_window(const std::vector<Key>& needed) {
  Prepared& p = *prepared_;
  const auto start = Clock::now();
  double load_s = 0.0;
  std::vector<Key> order = needed;
  order.insert(order.end(), p.pending.begin(), p.pending.end());
  int64_t count = 0, cached = 0, last = 0;
  bool loaded = false;
  const bool loaded_before = pipeline_->text_encoders_loaded();  // by a calibration that measured with them
  for (size_t i = 0; i < order.size(); ++i) {
    const Key& key = order[i];
    if (p.entries.count(key)) continue;
    if (i >= needed.size() && p.bytes + last > p.limit) break;
    Prepared::Entry entry;
    if (auto hit = cached_embedding(key)) {
      entry = {std::move(hit->first), std::move(hit->second), 0};
      ++cached;
    } else {
      if (!loaded) {
        const auto load_start = Clock::now();
        load_text_encoders();
        load_s = std::chrono::duration<double>(Clock::now() - load_start).count();
        pipeline_->hold_text_encoders(true);  // one trip to the device for the whole window (offload)
        loaded = true;
      }
      const PromptEmbeddings e = encode({key.prompt}, key.max_sequence_length, key.text_loras);
      entry = {e.prompt_embeds.to(c10::Device(c10::kCPU)), e.pooled.to(c10::Device(c10::kCPU)), 0};
      store_embedding(key, entry.prompt_embeds, entry.pooled);
      ++count;
    }
    entry.bytes = static_cast<int64_t>(entry.prompt_embeds.nbytes() + entry.pooled.nbytes());
    last = entry.bytes;
    p.bytes += entry.bytes;
    p.entries.emplace(key, std::move(entry));
    p.pending.erase(std::find(p.pending.begin(), p.pending.end(), key));
  }
  if (pipeline_->text_encoders_loaded()) pipeline_->release_text_encoders();  // and the device cache with them
  ++stats_.encode_stages;
  stats_.prompts_from_cache += cached;
  char line[300];
  std::snprintf(line, sizeof line,
                "encode stage: %lld prompt(s) in %.2f s%s, %.1f MiB of embeddings in host memory, %zu still to "
                "encode; %s",
                static_cast<long long>(count),
                std::chrono::duration<double>(Clock::now() - start).count() - load_s,
                cached > 0 ? (", " + std::to_string(cached) + " from the prompt cache").c_str() : "", mib(p.bytes),
                p.pending.size(),
                count > 0       ? "text encoders released"
                : loaded_before ? "text encoders released (every prompt came from the cache)"
                                : "text encoders not loaded (every prompt came from the cache)");
  log::info(line);
}

std::optional<std::pair<at::Tensor, at::Tensor>> FluxGenerator::cached_embedding(const Key& key) {
  if (!options_.prompt_cache || !key.text_loras.empty()) return std::nullopt;
  auto hit = options_.prompt_cache->find(key.prompt, key.max_sequence_length);
  // Only the run's own dtype: a cache shared with an fp32 run holds other entries anyway (the key
  // says so); this guards against a damaged but well-formed one.
  if (hit && hit->first.scalar_type() != pipeline_->options().dtype) return std::nullopt;
  return hit;
}

void FluxGenerator::store_embedding(const Key& key, const at::Tensor& prompt_embeds, const at::Tensor& pooled) {
  // Encoded on the CPU after the device ran out of memory: not what the key (this device) promises.
  if (!options_.prompt_cache || stats_.cpu_encode_fallbacks > 0 || !key.text_loras.empty()) return;
  options_.prompt_cache->store(key.prompt, key.max_sequence_length, prompt_embeds, pooled);
}

void FluxGenerator::rendered(const Key& key) {
  if (!prepared_) return;
  Prepared& p = *prepared_;
  const auto use = p.uses.find(key);
  if (use == p.uses.end() || --use->second > 0) return;
  p.uses.erase(use);
  if (const auto it = p.entries.find(key); it != p.entries.end()) {
    p.bytes -= it->second.bytes;
    p.entries.erase(it);
  }
}

PromptEmbeddings FluxGenerator::embeddings_for(const std::vector<job::RenderItem>& batch, int max_sequence_length) {
  if (prepared_) {
    std::vector<Key> needed;  // prepared keys that a later window was to encode
    for (const auto& item : batch) {
      const Key key = key_of(item, max_sequence_length);
      if (prepared_->uses.count(key) && !prepared_->entries.count(key) &&
          std::find(needed.begin(), needed.end(), key) == needed.end()) {
        needed.push_back(key);
      }
    }
    if (!needed.empty()) {
      if (options_.on_stage) options_.on_stage("encode");
      encode_window(needed);
    }
  }
  // Entries are copied out of the cache first: encoding the missing prompts may evict them.
  std::map<Key, Cache::Entry> rows;
  std::vector<Key> missing;
  for (const auto& item : batch) {
    const Key key = key_of(item, max_sequence_length);
    if (rows.count(key)) continue;
    if (prepared_) {
      if (const auto it = prepared_->entries.find(key); it != prepared_->entries.end()) {
        rows.emplace(key, Cache::Entry{it->second.prompt_embeds, it->second.pooled});
        continue;
      }
    }
    if (const Cache::Entry* cached = cache_->find(key)) {
      rows.emplace(key, *cached);
    } else if (std::find(missing.begin(), missing.end(), key) == missing.end()) {
      missing.push_back(key);
    }
  }
  if (!missing.empty()) {
    if (options_.on_stage) options_.on_stage("encode");
    std::vector<Key> encode_now;
    for (const Key& key : missing) {
      if (auto hit = cached_embedding(key)) {
        const Cache::Entry entry{hit->first, hit->second};
        rows.emplace(key, entry);
        cache_->put(key, entry);
        ++stats_.prompts_from_cache;
      } else {
        encode_now.push_back(key);
      }
    }
    if (!encode_now.empty()) load_text_encoders();
    for (const Key& key : encode_now) {  // each prompt is encoded alone anyway (FluxPipeline::encode_prompts)
      const PromptEmbeddings encoded = encode({key.prompt}, max_sequence_length, key.text_loras);
      const Cache::Entry entry{encoded.prompt_embeds.clone(), encoded.pooled.clone()};
      rows.emplace(key, entry);
      cache_->put(key, entry);
      store_embedding(key, entry.prompt_embeds, entry.pooled);
    }
  }
  const c10::Device device = pipeline_->options().device;
  std::vector<at::Tensor> states, pooled;
  for (const auto& item : batch) {
    const Cache::Entry& entry = rows.at(key_of(item, max_sequence_length));
    states.push_back(entry.prompt_embeds.to(device));
    pooled.push_back(entry.pooled.to(device));
  }
  return PromptEmbeddings{at::cat(states, 0), at::cat(pooled, 0)};
}

namespace {

models::vae::ExactTileOptions exact_tiles(const TiledDecodeSetup& setup) {
  models::vae::ExactTileOptions tiles;
  tiles.tile_pixels = setup.tile_pixels;
  tiles.maps_on_host = setup.maps_on_host;
  tiles.attention_chunk_bytes = setup.attention_chunk_bytes;
  tiles.whole_norm_bytes = setup.whole_norm_bytes;
  return tiles;
}

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

}  // namespace

// The decode planned for the image size (plan_decode, logged once per size): whole, or in exact
// tiles. A whole decode that runs out of memory at batch 1 (`last_resort`: at larger batches the
// runner halves the batch first) goes on in exact tiles, as does a tiled one that runs out: maps to
// host memory (CUDA), then tiles halved down to 64 px. What fitted is remembered per size.
at::Tensor FluxGenerator::decode_image(const at::Tensor& latents, int64_t index, int width, int height,
                                       bool last_resort) {
  const std::pair<int, int> shape{width, height};
  const c10::Device device = pipeline_->options().device;
  // Planned once per size (the VAE's config.json is read then only).
  const auto plan_for = [&](const VaeTiles& tiles, int64_t budget) {
    return plan_decode(vae_config(pipeline_->files()), width, height,
                       static_cast<int>(c10::elementSize(pipeline_->options().dtype)), device.is_cuda(),
                       allocated_bytes(device), budget, tiles,
                       options_.calibrated_decode_bytes ? options_.calibrated_decode_bytes(width, height) : 0);
  };
  auto known = decode_plans_.find(shape);
  if (known == decode_plans_.end()) {
    const DecodePlan plan = plan_for(options_.vae_tiles, options_.decode_budget_bytes);
    const int64_t budget = options_.decode_budget_bytes;
    const std::string line = "VAE decode at " + size_text(width, height) + " " +
                             (plan.tiled ? "in " + plan.describe() : std::string("whole")) + ": predicted peak " +
                             format_bytes(plan.peak_bytes) + (budget > 0 ? " of " + format_bytes(budget) : "") +
                             " (--vae-tiles " + vae_tiles_text(options_.vae_tiles) + ")";
    if (plan.tiled || options_.vae_tiles.mode != VaeTilesMode::kAuto) {
      log::info(line);
    } else {
      log::debug(line);
    }
    known = decode_plans_.emplace(shape, plan).first;
  }
  DecodePlan& plan = known->second;
  std::string error;
  if (!plan.tiled) {
    if (!last_resort || options_.vae_tiles.mode == VaeTilesMode::kOff) {
      return pipeline_->decode_image(latents, index, width, height);
    }
    try {
      return pipeline_->decode_image(latents, index, width, height);
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      error = exception_message(e);
    }
    release_cached_memory();
    // The prediction was low (or there was no budget): the largest tiles that fit the budget, then smaller.
    plan = plan_for(VaeTiles{VaeTilesMode::kOn, 0}, options_.decode_budget_bytes);
    log::warn("VAE decode at " + size_text(width, height) + " ran out of memory; decoding in exact tiles instead");
  }
  for (;;) {
    try {
      at::Tensor out = pipeline_->decode_image(latents, index, width, height, exact_tiles(plan.setup));
      ++stats_.tiled_decodes;
      return out;
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      error = exception_message(e);
    }
    release_cached_memory();
    TiledDecodeSetup& setup = plan.setup;
    const std::string tried = plan.describe();
    std::string change;
    if (device.is_cuda() && !setup.maps_on_host) {
      setup.maps_on_host = true;
      change = "feature maps to host memory";
    } else if (setup.attention_chunk_bytes > (int64_t{16} << 20)) {
      setup.attention_chunk_bytes /= 4;
      change = "attention chunks of " + format_bytes(setup.attention_chunk_bytes);
    } else if (setup.whole_norm_bytes > 0) {
      setup.whole_norm_bytes = 0;
      change = "GroupNorm statistics over tiles for every map";
    } else if (setup.tile_pixels / 2 >= 64) {
      setup.tile_pixels = setup.tile_pixels / 2 / 8 * 8;
      change = std::to_string(setup.tile_pixels) + " px tiles";
    } else {
      decode_plans_.erase(shape);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "VAE decode at ", width, "x", height,
                       " out of memory, also in exact tiles down to 64 px: ", error);
    }
    log::warn("VAE decode at " + size_text(width, height) + " in " + tried + " ran out of memory; trying " + change);
  }
}

std::vector<Image> FluxGenerator::generate(const std::vector<job::RenderItem>& batch) {
  std::vector<Image> images(batch.size());
  generate_each(batch, [&](size_t index, Image&& image) { images.at(index) = std::move(image); });
  return images;
}

namespace {

std::string weights_of(const ComponentFiles& files) {
  std::string out = files.files.empty() ? std::string("?") : files.files.front();
  if (!files.prefix.empty()) out += " [" + files.prefix + "]";
  return out;
}

// "batch of 3 (a.png, b.png, c.png)", at most three names.
std::string batch_text(const std::vector<job::RenderItem>& batch) {
  std::string files;
  for (size_t i = 0; i < batch.size() && i < 3; ++i) files += (i ? ", " : "") + batch[i].file;
  if (batch.size() > 3) files += ", +" + std::to_string(batch.size() - 3) + " more";
  return "batch of " + std::to_string(batch.size()) + " (" + files + ")";
}

}  // namespace

void FluxGenerator::generate_each(const std::vector<job::RenderItem>& batch, const ImageSink& on_image) {
  if (batch.empty()) return;
  const job::RenderParams& first = batch.front().params;
  for (const auto& item : batch) {  // the caller's contract, not a stage error
    const job::RenderParams& p = item.params;
    FLUXBATCH_CHECK(p.width == first.width && p.height == first.height && p.steps == first.steps &&
                        p.max_sequence_length == first.max_sequence_length,
                    InputError,
                    "a batch must share width, height, steps and max_sequence_length (" + item.location + ")");
  }
  // Out of memory goes to the runner as it is (it halves the batch); anything else is a model or
  // device error naming the stage and the batch, and stops the job.
  const char* stage_name = "encode";
  try {
    render_batch(batch, on_image, stage_name);
  } catch (const OutputError&) {
    throw;  // writing an image (the runner's sink) failed: not a stage error
  } catch (const std::exception& e) {
    if (is_out_of_memory(e)) throw;
    throw_stage_error(e, std::string(stage_name) + " stage, " + batch_text(batch));
  }
}

void FluxGenerator::render_batch(const std::vector<job::RenderItem>& batch, const ImageSink& on_image,
                                 const char*& stage_name) {
  const job::RenderParams& first = batch.front().params;
  DenoiseRequest request;
  request.width = first.width;
  request.height = first.height;
  request.steps = first.steps;
  for (const auto& item : batch) {  // generate_each checked that they share the shape
    request.seeds.push_back(item.params.seed);
    request.guidance.push_back(item.params.guidance);
    if (options_.loras) {
      request.loras.push_back(options_.loras->set_for(item.params.loras, models::lora::LoraComponent::kTransformer));
    }
  }

  const c10::Device device = pipeline_->options().device;
  const auto seconds_since = [&](Clock::time_point t) {
    synchronize(device);
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  reset_peak_memory(device);
  const auto stage = [&](const char* name) {
    if (options_.on_stage) options_.on_stage(name);
  };
  stage("");  // a batch starts from idle, also when the last one ended in an exception
  // Stage "encode" only when prompts must be encoded now (embeddings_for says so); prepared ones
  // are gathered from host memory as part of the batch.
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
  if (!pipeline_->denoisers_loaded()) {
    stage("load");  // staged: the transformer and the VAE come once the text encoders are gone
    pipeline_->load_denoisers();
  }
  stage("denoise");
  stage_name = "denoise";
  t0 = Clock::now();
  const at::Tensor latents = pipeline_->denoise(embeddings, request, on_step);  // empties the cache after
  // NaN / Inf would decode to a black or noise image written as if it were fine.
  FLUXBATCH_CHECK(at::isfinite(latents).all().item<bool>(), ModelError,
                  "the transformer's output is not finite (NaN or Inf): " + weights_of(pipeline_->files().transformer) +
                      " holds NaN or Inf values (NaN scales in a quantized file?) or float16 overflowed; check that "
                      "file, or render with --dtype bf16");
  const double denoise_s = seconds_since(t0);
  const c10::InferenceMode inference;
  stage("decode");
  stage_name = "decode";
  t0 = Clock::now();
  const int64_t tiled_before = stats_.tiled_decodes;
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t tiled = stats_.tiled_decodes;
    // pixels: [1, H, W, 3] uint8 on the CPU, contiguous
    const at::Tensor decoded =
        decode_image(latents, static_cast<int64_t>(b), request.width, request.height, batch.size() == 1);
    FLUXBATCH_CHECK(at::isfinite(decoded).all().item<bool>(), ModelError,
                    "the VAE's output is not finite (NaN or Inf): " + weights_of(pipeline_->files().vae) +
                        " holds NaN or Inf values or float16 overflowed; check that file, or render with --dtype bf16");
    const at::Tensor pixels = sampling::postprocess_uint8(decoded);
    Image image;
    // A tiled decode, or embeddings from the CPU fallback, is not what a normal render gives.
    image.cacheable = stats_.tiled_decodes == tiled && stats_.cpu_encode_fallbacks == 0;
    image.height = static_cast<int>(pixels.size(1));
    image.width = static_cast<int>(pixels.size(2));
    image.rgb.resize(static_cast<size_t>(pixels.numel()));
    std::memcpy(image.rgb.data(), pixels.data_ptr<uint8_t>(), image.rgb.size());
    rendered(key_of(batch[b], first.max_sequence_length));
    on_image(b, std::move(image));
  }
  pipeline_->finish_decode();
  const double decode_s = seconds_since(t0);
  char line[300];
  std::snprintf(line, sizeof line,
                "batch of %zu at %dx%d: encode %.2f s, denoise %.2f s (%.1f ms/step, %d steps), decode %.2f s%s, "
                "peak allocated %.2f GiB",
                batch.size(), request.width, request.height, encode_s, denoise_s, 1000.0 * denoise_s / steps, steps,
                decode_s, stats_.tiled_decodes > tiled_before ? " (tiled)" : "",
                static_cast<double>(peak_allocated_bytes(device)) / (1 << 30));
  stage("");
  log::info(options_.memory_note ? line + (", " + options_.memory_note(batch)) : std::string(line));
}

std::unique_ptr<ImageGenerator> make_flux_generator(const std::string& model_path, const GeneratorOptions& options) {
  return std::make_unique<FluxGenerator>(model_path, options);
}

}  // namespace fluxbatch::runtime
