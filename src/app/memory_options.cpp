#include "memory_options.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "fluxbatch/core/error.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/memory/memory_probe.h"

namespace fluxbatch::app {

void add_memory_options(CLI::App& command, MemoryOptions& o, bool monitor) {
  const std::string group = "Memory";
  command
      .add_option("--vram-budget", o.budget,
                  "Most bytes fluxbatch may use on the device, e.g. 6G (default: what is free minus the reserve); "
                  "enforced through the allocator")
      ->type_name("SIZE")
      ->group(group);
  command
      .add_option("--vram-reserve", o.reserve,
                  std::string("Device memory left untouched for CUDA's lazily loaded kernels and other processes "
                              "(default ") +
                      kDefaultVramReserve + ")")
      ->type_name("SIZE")
      ->group(group);
  command
      .add_option("--offload", o.offload,
                  "auto, on, off or stream. off: each stage loads its own components from disk when it starts "
                  "(text encoders, then transformer + VAE), so they never share the device; on: every component "
                  "waits in pinned host memory and is copied to the device for its stage only; stream: as on, but "
                  "the transformer and T5 are never on the device whole: as many of their blocks (57, 24) as the "
                  "budget allows stay resident for their stage and the rest are copied in one by one while the "
                  "previous one computes (for cards that cannot hold the transformer, e.g. 4 GiB; same images, "
                  "slower; the log and plan say how many blocks stream); "
                  "auto = stream when the transformer takes over 7/8 of the budget, else on when the transformer "
                  "+ VAE take over 3/4 of it, else off (default auto)")
      ->type_name("MODE")
      ->check(CLI::IsMember({"auto", "on", "off", "stream"}))
      ->group(group);
  command
      .add_option("--vae-tiles", o.vae_tiles,
                  "VAE decode in exact tiles: auto, off, on or a tile edge in pixels (a multiple of 8, e.g. 256). "
                  "Tiles give the whole-image decode's pixels (computed in fp32, they match the fp32 whole decode "
                  "to within one 8-bit level: GroupNorm statistics gathered over all tiles, convolutions fed their "
                  "neighbours' halo) with a fraction of its memory, the feature maps waiting in host memory on "
                  "CUDA; slower. auto = whole when its predicted peak fits the "
                  "budget, else the largest tiles that fit; on = tiles of the planner's size; off = never tile "
                  "(default auto)")
      ->type_name("MODE")
      ->group(group);
  if (!monitor) return;
  command
      .add_option("--monitor-interval", o.monitor_interval_ms,
                  "Memory sampling period in milliseconds; 0 turns the monitor's thread off (default 100)")
      ->type_name("MS")
      ->check(CLI::Range(0, 60000))
      ->group(group);
  command
      .add_option("--monitor-threshold", o.monitor_threshold,
                  "Warn once per stage when use passes this share of the budget (default 0.9)")
      ->type_name("F")
      ->check(CLI::Range(0.01, 1.0))
      ->group(group);
}

Budget resolve_budget(c10::Device device, const MemoryOptions& options) {
  using runtime::format_bytes;
  Budget b;
  const int64_t reserve = runtime::parse_byte_size(options.reserve, "--vram-reserve");
  const int64_t user = options.budget.empty() ? 0 : runtime::parse_byte_size(options.budget, "--vram-budget");
  b.user_given = user > 0;
  int64_t available = 0;
  std::string what;
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : 0;
    for (const runtime::GpuMemory& g : runtime::probe_gpus()) {
      if (g.index == index) available = g.usable_bytes();
    }
    what = "free on " + device.str();
  } else {
    available = runtime::host_available_bytes();
    what = "available host memory";
  }
  const int64_t free_after_reserve = available - reserve;
  if (b.user_given && (device.is_cpu() || user <= free_after_reserve)) {
    b.bytes = user;
    b.how = format_bytes(user) + " (--vram-budget)";
    return b;
  }
  if (free_after_reserve <= 0) {
    throw DeviceError("no memory left for the run: " + format_bytes(available) + " " + what + ", reserve " +
                      format_bytes(reserve) + " (--vram-reserve)");
  }
  b.bytes = free_after_reserve;
  b.how = format_bytes(b.bytes) + " (" + format_bytes(available) + " " + what + " - reserve " +
          format_bytes(reserve) + (b.user_given ? "; less than --vram-budget " + format_bytes(user) : "") + ")";
  return b;
}

std::vector<runtime::ResolutionGroup> resolution_groups(const std::vector<const job::RenderItem*>& items) {
  std::map<std::tuple<int, int, int>, size_t> index;
  std::vector<runtime::ResolutionGroup> groups;
  for (const job::RenderItem* item : items) {
    const job::RenderParams& p = item->params;
    const auto [it, added] = index.emplace(std::make_tuple(p.width, p.height, p.max_sequence_length), groups.size());
    if (added) groups.push_back({p.width, p.height, p.max_sequence_length, 0});
    ++groups[it->second].images;
  }
  return groups;
}

std::vector<runtime::ResolutionGroup> resolution_groups(const job::JobSpec& spec) {
  std::vector<const job::RenderItem*> items;
  for (const job::RenderItem& item : spec.items) items.push_back(&item);
  return resolution_groups(items);
}

runtime::Residency resolve_residency(const std::string& offload, c10::Device device,
                                     const std::vector<runtime::ComponentWeights>& weights, int64_t budget_bytes) {
  if (offload == "on") return runtime::Residency::kOffload;
  if (offload == "stream") return runtime::Residency::kStream;
  if (offload == "off" || !device.is_cuda()) return runtime::Residency::kStaged;
  if (offload != "auto") throw InputError("--offload: expected auto, on, off or stream, got '" + offload + "'");
  return runtime::choose_residency(weights, budget_bytes);
}

StreamingPlan plan_streaming(const runtime::ModelFiles& files, const std::vector<runtime::ComponentWeights>& weights,
                             int dtype_size, const std::vector<runtime::ResolutionGroup>& groups,
                             const std::vector<runtime::MemoryModel>& models, int max_batch, bool batch_fixed,
                             int64_t budget_bytes) {
  if (models.size() != groups.size()) throw InputError("streaming plan: one memory model per resolution group");
  const auto bytes_of = [&](const std::string& name) {
    for (const runtime::ComponentWeights& c : weights) {
      if (c.name == name) return c.weight_bytes;
    }
    return int64_t{0};
  };
  // A stage's activations, the most over the groups at their batches.
  const auto activations = [&](size_t stage, const std::vector<int>& batches) {
    int64_t most = 0;
    for (size_t i = 0; i < groups.size(); ++i) {
      const runtime::ResolutionGroup& g = groups[i];
      most = std::max(most, models[i].stages[stage].cost.bytes(g.width, g.height, g.max_sequence_length, dtype_size,
                                                               batches[i]));
    }
    return most;
  };
  std::vector<int> wanted;
  for (const runtime::ResolutionGroup& g : groups) {
    wanted.push_back(static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g.images, max_batch))));
  }
  StreamingPlan out;
  const runtime::TransformerSplit t5 =
      runtime::t5_encoder_split(runtime::text_encoder_2_config(files), bytes_of("text_encoder_2"), dtype_size);
  out.t5 = runtime::plan_block_stream(
      t5, budget_bytes - bytes_of("text_encoder") - activations(0, wanted) - runtime::kT5StreamHeadroomBytes);
  const runtime::TransformerSplit split =
      runtime::flux_transformer_split(runtime::transformer_config(files), bytes_of("transformer"));
  out.transformer = runtime::plan_block_stream(split, budget_bytes - activations(1, wanted));
  if (out.transformer.resident_blocks == 0 && !batch_fixed && !groups.empty()) {
    std::vector<runtime::MemoryModel> streamed = models;
    for (runtime::MemoryModel& m : streamed) m.components = runtime::streamed_components(weights, out.transformer);
    const runtime::Plan batches = runtime::plan_batches(streamed, groups, budget_bytes, std::max(1, max_batch));
    std::vector<int> planned;
    for (const runtime::GroupPlan& g : batches.groups) planned.push_back(g.batch_size);
    out.transformer = runtime::plan_block_stream(split, budget_bytes - activations(1, planned));
  }
  out.weights = runtime::streamed_components(runtime::streamed_components(weights, out.transformer), out.t5,
                                             "text_encoder_2");
  return out;
}

StreamingPlan plan_streaming(const runtime::ModelFiles& files, const std::vector<runtime::ComponentWeights>& weights,
                             int dtype_size, const std::vector<runtime::ResolutionGroup>& groups,
                             const runtime::CalibrationCache& cache, const std::string& device_identity,
                             const std::string& model_identity, int max_batch, bool batch_fixed, int64_t budget_bytes) {
  const std::vector<runtime::MemoryModel> models =
      models_for_groups(runtime::flux_memory_model(weights, dtype_size, runtime::Residency::kStream), groups, cache,
                        device_identity, model_identity);
  return plan_streaming(files, weights, dtype_size, groups, models, max_batch, batch_fixed, budget_bytes);
}

runtime::CalibrationKey calibration_key(const std::string& device_identity, const std::string& model_identity,
                                        const runtime::ResolutionGroup& group) {
  return {device_identity, model_identity, group.width, group.height, group.max_sequence_length};
}

std::vector<runtime::MemoryModel> models_for_groups(const runtime::MemoryModel& base,
                                                    const std::vector<runtime::ResolutionGroup>& groups,
                                                    const runtime::CalibrationCache& cache,
                                                    const std::string& device_identity,
                                                    const std::string& model_identity) {
  std::vector<runtime::MemoryModel> models;
  for (const runtime::ResolutionGroup& g : groups) {
    const auto found = cache.find(calibration_key(device_identity, model_identity, g));
    models.push_back(found ? runtime::apply_calibration(base, *found) : base);
  }
  return models;
}

}  // namespace fluxbatch::app
