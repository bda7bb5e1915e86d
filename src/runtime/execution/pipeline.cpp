#include "fluxbatch/runtime/execution/pipeline.h"

#include "fluxbatch/core/error.h"
#include "fluxbatch/core/log.h"
#include "fluxbatch/models/clip/clip_text_model.h"
#include "fluxbatch/models/flux/transformer.h"
#include "fluxbatch/models/t5/t5_encoder.h"
#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/runtime/device.h"
#include "fluxbatch/runtime/execution/graphed_denoiser.h"
#include "fluxbatch/runtime/memory/memory_budget.h"
#include "fluxbatch/runtime/lora/lora_catalog.h"
#include "fluxbatch/nn/fp8_state.h"
#include "fluxbatch/runtime/model_io/consistency.h"
#include "fluxbatch/nn/linear.h"
#include "fluxbatch/nn/nf4_state.h"
#include "fluxbatch/nn/block_streamer.h"
#include "fluxbatch/nn/pinned_weights.h"
#include "fluxbatch/nn/weights.h"
#include "fluxbatch/sampling/latents.h"
#include "fluxbatch/sampling/postprocess.h"
#include "fluxbatch/tokenizers/clip_tokenizer.h"
#include "fluxbatch/tokenizers/t5_tokenizer.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#ifdef FLUXBATCH_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

namespace fluxbatch::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string seconds_text(double seconds) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f s", seconds);
  return buffer;
}

std::string excerpt(const std::string& text) {
  return text.size() <= 60 ? text : text.substr(0, 57) + "...";
}

// The velocity model of one batch: FluxTransformer2DModel with that batch's conditioning.
class TransformerDenoiser : public sampling::Denoiser {
 public:
  TransformerDenoiser(const models::flux::FluxTransformer2DModel& transformer, const PromptEmbeddings& embeddings,
                      at::Tensor img_ids, at::Tensor txt_ids, at::Tensor guidance)
      : transformer_(transformer),
        embeddings_(embeddings),
        img_ids_(std::move(img_ids)),
        txt_ids_(std::move(txt_ids)),
        guidance_(std::move(guidance)) {}

  // latents: [B, S, C], timestep: [B] -> [B, S, C]
  at::Tensor predict(const at::Tensor& latents, const at::Tensor& timestep) override {
    return transformer_->forward(latents, embeddings_.prompt_embeds, embeddings_.pooled, timestep, img_ids_, txt_ids_,
                                 guidance_);
  }

 private:
  const models::flux::FluxTransformer2DModel& transformer_;
  const PromptEmbeddings& embeddings_;
  at::Tensor img_ids_, txt_ids_, guidance_;
};

std::string describe(const ComponentFiles& files) {
  std::string out = files.files.empty() ? std::string("?") : files.files.front();
  if (files.files.size() > 1) out += " (+" + std::to_string(files.files.size() - 1) + " files)";
  if (!files.prefix.empty()) out += " [" + files.prefix + "]";
  return out;
}

void refuse_quantized(const ComponentFiles& files) {
  // Scaled fp8 is a storage form nn::load_state dequantizes (or load_state_fp8 keeps); bnb ones need their loaders.
  FLUXBATCH_CHECK(files.quantization.empty() || files.quantization == "scaled-fp8", ModelError,
                  describe(files) + ": " + models::component_name(files.component) + " is quantized (" +
                      files.quantization + "); this build renders only unquantized weights");
}

nn::LoadOptions load_options(const ComponentFiles& files, const at::TensorOptions& options,
                             std::vector<std::string> ignore) {
  nn::LoadOptions out;
  out.dtype = options.dtype().toScalarType();
  out.device = options.device();
  out.ignore_prefixes = std::move(ignore);
  out.what = std::string(models::component_name(files.component)) + " (" + describe(files) + ")";
  return out;
}

bool has_key(const nn::TensorMap& weights, const std::string& prefix) {
  auto it = weights.lower_bound(prefix);
  return it != weights.end() && it->first.rfind(prefix, 0) == 0;
}

// A transformer loaded for fp8 compute: each single block's q / k / v / MLP projections laid out for one GEMM
// (SingleBlockImpl::join_fp8_projections), and --attention fp8 (PipelineOptions::attention_fp8), which is only
// offered with fp8 compute.
void finish_fp8_transformer(models::flux::FluxTransformer2DModel& transformer, const PipelineOptions& pipeline) {
  const int joined = transformer->join_fp8_projections();
  if (joined > 0) {
    log::debug("fp8 compute: " + std::to_string(joined) + " single blocks run q, k, v and the MLP as one GEMM");
  }
  transformer->set_fp8_attention(pipeline.attention_fp8);
  if (pipeline.attention_fp8) log::info("attention: fp8 (cuDNN, e4m3 q/k/v/out, one scale per image)");
}

// `compute`: the device the model runs on, where quantize-on-load happens even when `options` (the
// components' home) is the host.
models::flux::FluxTransformer2DModel load_transformer(const ModelFiles& model, const at::TensorOptions& options,
                                                      const PipelineOptions& pipeline, c10::Device compute) {
  const bool nf4_file = model.transformer.quantization == "bnb-nf4";
  const bool quantize_nf4 = pipeline.quantize_nf4;
  if (nf4_file || quantize_nf4) {
    // Built on the CPU: at::empty's pages are only reserved, and NF4 layers drop their dense weight
    // before anything touches it, so neither host nor device ever holds the dense model. (Meta
    // tensors cannot be set_data'd to real ones.) The rest moves to the device on load.
    models::flux::FluxTransformer2DModel transformer(transformer_config(model), options.device(at::kCPU));
    const nn::TensorMap weights = read_component(model.transformer);
    nn::LoadOptions load = load_options(model.transformer, options, {});
    load.quantize_device = compute;
    if (quantize_nf4) {
      nn::load_state_quantizing_nf4(*transformer, weights, load);
    } else {
      nn::load_nf4_state(*transformer, weights, load);
    }
    if (pipeline.compute_fp8) {
      const int n = nn::nf4_layers_to_fp8(*transformer, models::flux::computes_in_fp8, pipeline.fp8_from_nf4);
      log::info("fp8 compute: " + std::to_string(n) + " transformer Linears " +
                (pipeline.fp8_from_nf4 ? "stay NF4 and are turned into fp8 at each call"
                                       : "hold fp8 weights made from their NF4 weights"));
      finish_fp8_transformer(transformer, pipeline);
    }
    return transformer;
  }
  refuse_quantized(model.transformer);
  if (pipeline.compute_fp8) {
    // Built on the CPU for the same reason as NF4: the fp8 layers never hold their dense weight.
    models::flux::FluxTransformer2DModel transformer(transformer_config(model), options.device(at::kCPU));
    nn::LoadOptions load = load_options(model.transformer, options, {});
    load.quantize_device = compute;
    const int n = nn::load_state_fp8(*transformer, read_component(model.transformer), load, models::flux::computes_in_fp8);
    log::info("fp8 compute: " + std::to_string(n) + " transformer Linears hold per-channel fp8 weights");
    finish_fp8_transformer(transformer, pipeline);
    return transformer;
  }
  models::flux::FluxTransformer2DModel transformer(transformer_config(model), options);
  nn::load_state(*transformer, read_component(model.transformer), load_options(model.transformer, options, {}));
  return transformer;
}

models::vae::VaeDecoder load_vae(const ModelFiles& model, const at::TensorOptions& options) {
  refuse_quantized(model.vae);
  const nn::TensorMap weights = read_component(model.vae);
  const bool post_quant_conv = has_key(weights, "post_quant_conv.");
  models::vae::VaeDecoder vae(vae_config(model), options, post_quant_conv);
  nn::load_state(*vae, weights, load_options(model.vae, options, models::vae::vae_ignored_prefixes(post_quant_conv)));
  return vae;
}

models::clip::ClipTextModel load_clip(const ModelFiles& model, const at::TensorOptions& options) {
  refuse_quantized(model.text_encoder);
  nn::TensorMap weights = read_component(model.text_encoder);
  models::clip::canonicalize_clip_checkpoint(weights);
  models::clip::ClipTextModel clip(text_encoder_config(model), options);
  nn::load_state(*clip, weights, load_options(model.text_encoder, options, models::clip::clip_ignored_prefixes()));
  return clip;
}

models::t5::T5EncoderModel load_t5(const ModelFiles& model, const at::TensorOptions& options, bool quantize_nf4,
                                   c10::Device compute) {
  refuse_quantized(model.text_encoder_2);
  nn::TensorMap weights = read_component(model.text_encoder_2);
  models::t5::canonicalize_t5_checkpoint(weights);
  nn::LoadOptions load = load_options(model.text_encoder_2, options, models::t5::t5_ignored_prefixes());
  load.quantize_device = compute;
  // Quantizing: built on the CPU like the NF4 transformer (dense Linear pages never touched).
  models::t5::T5EncoderModel t5(text_encoder_2_config(model), quantize_nf4 ? options.device(at::kCPU) : options);
  if (quantize_nf4) {
    models::t5::load_t5_quantizing_nf4(*t5, weights, load);
  } else {
    nn::load_state(*t5, weights, load);
  }
  // transformers keeps T5's feed-forward output projections in fp32 when loading fp16.
  if (options.dtype() == at::kHalf) t5->keep_wo_in_float32();
  return t5;
}

}  // namespace

VariantDefaults variant_defaults(FluxVariant variant) {
  if (variant == FluxVariant::kSchnell) return VariantDefaults{4, 0.0, 256};
  return VariantDefaults{28, 3.5, 512};
}

FluxVariant probe_variant(const std::string& model_path) {
  LocateOptions options;
  options.require_tokenizers = false;
  return locate_model(model_path, options).variant;
}

struct FluxPipeline::State {
  PipelineOptions options;
  ModelFiles files;
  FluxVariant variant = FluxVariant::kDev;
  sampling::SchedulerConfig scheduler;
  models::flux::FluxConfig transformer_config;  // from the model's config, also before the weights load
  models::vae::VaeConfig vae_config;
  models::flux::FluxTransformer2DModel transformer{nullptr};
  models::vae::VaeDecoder vae{nullptr};
  models::clip::ClipTextModel clip{nullptr};
  models::t5::T5EncoderModel t5{nullptr};
  std::optional<tokenizers::ClipTokenizer> clip_tokenizer;
  std::optional<tokenizers::T5Tokenizer> t5_tokenizer;

  // kOffload: each loaded component's host copy, by module.
  std::map<const torch::nn::Module*, std::unique_ptr<nn::PinnedWeights>> pinned;
  // kStream: the transformer's and T5's host copies, streamed block by block with their resident
  // counts, by module (CLIP and the VAE are pinned).
  struct Streamed {
    std::unique_ptr<nn::BlockStreamer> streamer;
    int resident = 0;
  };
  std::map<const torch::nn::Module*, Streamed> streamed;

  bool text_held = false;    // hold_text_encoders: no trip home between encode_prompts calls
  bool text_on_cpu = false;  // the encode stage's out-of-memory fallback: CLIP and T5 run on the CPU

  bool stream() const { return options.residency == Residency::kStream; }
  // Streaming offloads every component; the transformer and T5 go through `streamed`, not `pinned`.
  bool offload() const { return options.residency == Residency::kOffload || stream(); }
  bool staged() const { return options.residency == Residency::kStaged; }
  // Where weights live between stages: the device, or the CPU when offloading.
  c10::Device home() const { return offload() ? c10::Device(c10::kCPU) : options.device; }
  at::TensorOptions home_options() const { return at::TensorOptions().dtype(options.dtype).device(home()); }
  // Where CLIP and T5 run.
  c10::Device text_device() const { return text_on_cpu ? c10::Device(c10::kCPU) : options.device; }
  at::TensorOptions text_options() const {
    return text_on_cpu ? home_options().device(c10::kCPU) : home_options();
  }
  void visit_text(torch::nn::Module& module) const {
    if (!text_on_cpu) visit(module);
  }
  void leave_text(torch::nn::Module& module) const {
    if (!text_on_cpu && !text_held) leave(module);
  }

  void empty_cache() const {
#ifdef FLUXBATCH_WITH_CUDA
    if (options.device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  }

  // Copies a component to the device for its stage and lets the copy go afterwards (offload only).
  void visit(torch::nn::Module& module) const {
    if (const auto it = streamed.find(&module); it != streamed.end()) {
      it->second.streamer->to_device(it->second.resident);
    } else if (offload()) {
      pinned.at(&module)->to_device();
    }
  }
  void leave(torch::nn::Module& module) const {
    if (const auto it = streamed.find(&module); it != streamed.end()) {
      it->second.streamer->to_host();
      empty_cache();
    } else if (offload()) {
      pinned.at(&module)->to_host();
      empty_cache();
    }
  }
  // Offload: the freshly loaded component's weights go to (pinned) host memory.
  void pin(torch::nn::Module& module) {
    if (offload()) pinned[&module] = std::make_unique<nn::PinnedWeights>(module, options.device);
  }
  void unpin(const torch::nn::Module* module) {
    if (module != nullptr) pinned.erase(module);
  }
  // Stream: `module`'s blocks wait in host memory and run through a ring of device slots, the first
  // `resident` of them staying on the device for the stage. `what`: "transformer" or "T5"; `per`: what
  // one pass is ("step", "prompt"); `stage`: the stage it serves.
  nn::BlockStreamer& stream_blocks(torch::nn::Module& module, std::vector<torch::nn::Module*> blocks, int resident,
                                   const std::string& what, const std::string& per, const std::string& stage) {
    const int ring = std::max(1, options.stream_slots);
    auto owned = std::make_unique<nn::BlockStreamer>(module, std::move(blocks), options.device, ring);
    nn::BlockStreamer& st = *owned;
    resident = std::clamp(resident, 0, st.blocks());
    int64_t bus = 0, slot = 0, held = st.other_bytes();
    for (int b = 0; b < st.blocks(); ++b) {
      if (b < resident) {
        held += st.block_bytes(b);
      } else {
        bus += st.block_bytes(b);
        slot = std::max(slot, st.block_bytes(b));
      }
    }
    const int slots = std::min(ring, st.blocks() - resident);
    log::info("streaming: " + std::to_string(resident) + " of " + std::to_string(st.blocks()) + " " + what +
              " blocks resident, " + std::to_string(st.blocks() - resident) + " streamed (" + format_bytes(bus) +
              " per " + per + " over the bus; the " + stage + " stage holds " + format_bytes(held + slots * slot) +
              " of " + what + " weights with " + std::to_string(slots) + " slot(s))");
    streamed[&module] = Streamed{std::move(owned), resident};
    return st;
  }
  void stream_transformer() {
    nn::BlockStreamer& st =
        stream_blocks(*transformer, transformer->blocks(), options.resident_blocks, "transformer", "step", "denoise");
    transformer->set_block_hook({[&st](int64_t i) { st.before_block(i); }, [&st](int64_t i) { st.after_block(i); }});
    if (options.device.is_cuda() && options.cuda_graphs) {
      log::info("streaming: CUDA graphs off (the blocks' slots change at every step)");
    }
  }
  void stream_t5() {
    nn::BlockStreamer& st = stream_blocks(*t5, t5->blocks(), options.t5_resident_blocks, "T5", "prompt", "encode");
    t5->set_block_hook({[&st](int64_t i) { st.before_block(i); }, [&st](int64_t i) { st.after_block(i); }});
  }
  // Drops a component's streamer (after unhooking the module, which outlives it here).
  void unstream(const torch::nn::Module* module) { streamed.erase(module); }

  void load_text_encoders() {
    if (clip && t5) return;
    // Staged: the denoise stage's weights leave before the encoders come (unless those run on the CPU).
    if (staged() && !text_on_cpu) free_denoisers();
    const auto start = Clock::now();
    const c10::InferenceMode inference;
    clip = load_clip(files, text_options());
    t5 = load_t5(files, text_options(), options.quantize_t5_nf4, text_device());
    if (!text_on_cpu) {
      pin(*clip);
      if (stream()) {
        stream_t5();
      } else {
        pin(*t5);
      }
    }
    log::info("loaded text encoders (" + describe(files.text_encoder) + ", " + describe(files.text_encoder_2) +
              ") in " + seconds_text(seconds_since(start)));
  }

  void free_text_encoders() {
    text_held = false;
    if (!clip && !t5) return;
    unpin(clip.get());
    if (t5) t5->set_block_hook({});
    unstream(t5.get());
    unpin(t5.get());
    clip = models::clip::ClipTextModel(nullptr);
    t5 = models::t5::T5EncoderModel(nullptr);
    empty_cache();
    log::debug("text encoders released");
  }

  void load_denoisers() {
    if (transformer && vae) return;
    if (staged()) free_text_encoders();
    const auto start = Clock::now();
    const c10::InferenceMode inference;
    transformer = load_transformer(files, home_options(), options, options.device);
    vae = load_vae(files, home_options());
    if (stream()) {
      stream_transformer();
    } else {
      pin(*transformer);
    }
    pin(*vae);
    log::info("loaded transformer and VAE (" + describe(files.transformer) + ", " + describe(files.vae) + ") in " +
              seconds_text(seconds_since(start)));
  }

  // The LoRA set merged into the transformer's dense weights (PipelineOptions::merge_loras); empty: none.
  nn::LoraSet merged;

  // Makes `set` the one merged into every Linear holding its adapters (the last one taken out first,
  // exactly: each layer puts its kept original back); an empty set takes the merge out.
  void merge_transformer_loras(const nn::LoraSet& set) {
    if (set == merged) return;
    std::vector<nn::LinearImpl*> linears;
    for (const auto& m : transformer->modules()) {
      if (auto* linear = dynamic_cast<nn::LinearImpl*>(m.get())) linears.push_back(linear);
    }
    for (nn::LinearImpl* linear : linears) linear->unmerge_loras();
    merged.clear();
    if (set.empty()) return;
    const auto start = Clock::now();
    int layers = 0;
    for (nn::LinearImpl* linear : linears) layers += linear->merge_loras(set, c10::Device(c10::kCPU)) ? 1 : 0;
    merged = set;
    log::info("LoRAs merged into " + std::to_string(layers) + " transformer layer(s) in " +
              seconds_text(seconds_since(start)) + " (originals kept in host memory)");
  }

  void free_denoisers() {
    merged.clear();
    if (!transformer && !vae) return;
    if (transformer) transformer->set_block_hook({});
    unstream(transformer.get());
    unpin(transformer.get());
    unpin(vae.get());
    transformer = models::flux::FluxTransformer2DModel(nullptr);
    vae = models::vae::VaeDecoder(nullptr);
    empty_cache();
    log::debug("transformer and VAE released");
  }

  // One prompt through both encoders: pooled CLIP [1, P] and T5 states [1, L, D], in the model dtype.
  std::pair<at::Tensor, at::Tensor> encode_one(const std::string& prompt, int max_sequence_length) {
    const auto clip_ids = clip_tokenizer->encode(prompt, tokenizers::ClipTokenizer::kDefaultMaxLength);
    if (clip_ids.truncated) {
      log::warn("prompt \"" + excerpt(prompt) + "\" is longer than CLIP's 77 tokens (" +
                std::to_string(clip_tokenizer->tokenize(prompt).size() + 2) + "): the rest is ignored by CLIP");
    }
    const auto t5_ids = t5_tokenizer->encode(prompt, static_cast<size_t>(max_sequence_length));
    if (t5_ids.truncated) {
      log::warn("prompt \"" + excerpt(prompt) + "\" is longer than max_sequence_length " +
                std::to_string(max_sequence_length) + " T5 tokens (" +
                std::to_string(t5_tokenizer->tokenize(prompt).size() + 1) + "): the rest is ignored");
    }
    const auto ids = [&](const std::vector<int64_t>& v) {
      return at::tensor(v, at::kLong).view({1, -1}).to(text_device());
    };
    at::Tensor pooled = clip->forward(ids(clip_ids.ids)).pooler_output.to(options.device, options.dtype);
    at::Tensor states = t5->forward(ids(t5_ids.ids)).to(options.device, options.dtype);
    return {pooled, states};
  }
};

FluxPipeline::FluxPipeline(const std::string& model_path, const PipelineOptions& options)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  FLUXBATCH_CHECK(!options.attention_fp8 || options.compute_fp8, InputError,
                  "attention_fp8 needs compute_fp8 (--attention fp8 needs --compute fp8)");
  s.options = options;
  const auto start = Clock::now();
  s.files = locate_model(model_path);
  s.transformer_config = transformer_config(s.files);
  s.vae_config = vae_config(s.files);
  // The transformer decides: only a model with a guidance embedder takes guidance.
  s.variant = s.transformer_config.guidance_embeds ? FluxVariant::kDev : FluxVariant::kSchnell;
  if (!s.files.scheduler_config.empty()) {
    s.scheduler = sampling::SchedulerConfig::from_json_file(s.files.scheduler_config);
  } else {
    s.scheduler = s.variant == FluxVariant::kDev ? sampling::SchedulerConfig::flux_dev()
                                                 : sampling::SchedulerConfig::flux_schnell();
  }
  s.clip_tokenizer.emplace(s.files.tokenizer_dir);
  s.t5_tokenizer.emplace(s.files.tokenizer_2_dir);
  // Mixed components fail here, before any stage, rather than in every item.
  check_components(s.files, *s.clip_tokenizer, *s.t5_tokenizer);
  if (s.staged()) {
    log::info(description() + " at " + s.files.root + " on " + c10::str(options.device) + " (" +
              dtype_name(options.dtype) + "): each stage loads its components when it starts");
    return;
  }
  s.load_denoisers();
  s.load_text_encoders();
  log::info("loaded " + description() + " from " + s.files.root + " on " + c10::str(options.device) + " (" +
            dtype_name(options.dtype) + (s.stream()    ? ", offloaded to host memory, transformer and T5 streamed by block"
                  : s.offload() ? ", offloaded to pinned host memory"
                                : "") + ") in " +
            seconds_text(seconds_since(start)));
}

FluxPipeline::~FluxPipeline() = default;

FluxVariant FluxPipeline::variant() const { return state_->variant; }

std::string describe_model(const ModelFiles& files, bool compute_fp8, bool attention_fp8) {
  // The compute and attention modes are part of what determines the pixels: resume compares them.
  return std::string("FLUX.1-") + variant_name(files.variant) + " (" + layout_name(files.layout) + ")" +
         (compute_fp8 ? ", fp8 compute" : "") + (attention_fp8 ? ", fp8 attention" : "");
}

std::string FluxPipeline::description() const {
  return describe_model(state_->files, state_->options.compute_fp8, state_->options.attention_fp8);
}

const ModelFiles& FluxPipeline::files() const { return state_->files; }

const sampling::SchedulerConfig& FluxPipeline::scheduler_config() const { return state_->scheduler; }
const PipelineOptions& FluxPipeline::options() const { return state_->options; }
int64_t FluxPipeline::latent_channels() const { return state_->transformer_config.in_channels / 4; }

PromptEmbeddings FluxPipeline::encode_prompts(const std::vector<std::string>& prompts, int max_sequence_length,
                                              const nn::LoraSet& text_loras) {
  FLUXBATCH_CHECK(!prompts.empty(), InputError, "encode_prompts: no prompts");
  FLUXBATCH_CHECK(max_sequence_length >= 1 && max_sequence_length <= 512, InputError,
                  "max_sequence_length must be within 1..512, got " + std::to_string(max_sequence_length));
  State& s = *state_;
  const c10::InferenceMode inference;
  s.load_text_encoders();
  s.visit_text(*s.clip);
  s.visit_text(*s.t5);
  const std::vector<nn::LoraSet> clip_loras{text_loras};  // one prompt at a time: a batch of one
  if (s.options.loras) {
    std::set<int> ids;
    for (const nn::LoraUse& use : text_loras) ids.insert(use.adapter);
    s.options.loras->attach(*s.clip, models::lora::LoraComponent::kTextEncoder, ids, s.options.dtype, s.text_device());
  }
  const nn::LoraScope lora_scope(&clip_loras);
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> encoded;
  std::vector<at::Tensor> pooled, states;
  for (const std::string& prompt : prompts) {
    auto it = encoded.find(prompt);
    if (it == encoded.end()) it = encoded.emplace(prompt, s.encode_one(prompt, max_sequence_length)).first;
    pooled.push_back(it->second.first);
    states.push_back(it->second.second);
  }
  PromptEmbeddings out{at::cat(states, 0), at::cat(pooled, 0)};
  if (s.options.keep_text_encoders) {
    s.leave_text(*s.clip);
    s.leave_text(*s.t5);
  } else {
    s.free_text_encoders();
  }
  return out;
}

at::Tensor FluxPipeline::denoise(const PromptEmbeddings& embeddings, const DenoiseRequest& request,
                                 const sampling::StepCallback& on_step) {
  State& s = *state_;
  const auto batch = static_cast<int64_t>(request.seeds.size());
  FLUXBATCH_CHECK(batch > 0 && embeddings.prompt_embeds.defined() && embeddings.prompt_embeds.size(0) == batch &&
                      embeddings.pooled.size(0) == batch,
                  InputError, "denoise: need one seed and one prompt embedding per image");
  FLUXBATCH_CHECK(request.guidance.size() == request.seeds.size(), InputError,
                  "denoise: need one guidance value per image");
  const c10::InferenceMode inference;
  const c10::Device device = s.options.device;
  const auto size = sampling::latent_size(request.height, request.width);
  const auto schedule = sampling::flow_schedule(request.steps, size.seq_len(), s.scheduler);

  at::Tensor latents = sampling::initial_noise(request.seeds, latent_channels(), size, s.options.dtype, device);
  at::Tensor img_ids = sampling::latent_image_ids(size, s.options.dtype, device);
  at::Tensor txt_ids = sampling::text_ids(embeddings.prompt_embeds.size(1), s.options.dtype, device);
  at::Tensor guidance;
  if (s.transformer_config.guidance_embeds) {
    // diffusers: torch.full([1], guidance_scale, dtype=float32).expand(B); the model rounds it itself.
    std::vector<float> values(request.guidance.begin(), request.guidance.end());
    guidance = at::tensor(values, at::kFloat).to(device);
  }
  const PromptEmbeddings on_device{embeddings.prompt_embeds.to(device, s.options.dtype),
                                   embeddings.pooled.to(device, s.options.dtype)};

  s.load_denoisers();
  s.visit(*s.transformer);
  if (s.options.loras) {
    std::set<int> ids;
    for (const nn::LoraSet& set : request.loras) {
      for (const nn::LoraUse& use : set) ids.insert(use.adapter);
    }
    s.options.loras->attach(*s.transformer, models::lora::LoraComponent::kTransformer, ids, s.options.dtype, device);
  }
  FLUXBATCH_CHECK(request.loras.empty() || static_cast<int64_t>(request.loras.size()) == batch, InputError,
                  "denoise: need one LoRA set per image");
  // Merged: one LoRA set for the whole batch (the runner groups batches so under merge_loras) on a
  // dense transformer that stays on the device (offload copies it in afresh at every stage).
  const bool uniform = !request.loras.empty() && !request.loras[0].empty() &&
                       std::all_of(request.loras.begin(), request.loras.end(),
                                   [&](const nn::LoraSet& set) { return set == request.loras[0]; });
  // Merging needs bf16/fp32 weights: NF4 and fp8 (--compute fp8) layers keep side paths.
  const bool dense = s.files.transformer.quantization.empty() && !s.options.quantize_nf4 && !s.options.compute_fp8;
  const bool merge = s.options.merge_loras && uniform && dense && !s.offload();
  if (s.options.loras) s.merge_transformer_loras(merge ? request.loras[0] : nn::LoraSet{});
  const nn::LoraScope lora_scope(request.loras.empty() || merge ? nullptr : &request.loras);
  {
    // The graph (and its private memory pool) lives for this call only: its buffers are the batch's
    // activations, given back below before the decode stage needs the room.
    TransformerDenoiser eager(s.transformer, on_device, img_ids, txt_ids, guidance);
    // Streaming: a graph would capture one step's slot assignment and copies; steps run eagerly.
    execution::GraphedDenoiser denoiser(eager, s.options.cuda_graphs && !s.stream(),
                                        "batch " + std::to_string(batch) + " at " + std::to_string(request.width) +
                                            "x" + std::to_string(request.height) + ", " +
                                            std::to_string(embeddings.prompt_embeds.size(1)) + " tokens",
                                        request.steps);
    latents = sampling::sample_euler(denoiser, latents, schedule, on_step);
  }
  s.leave(*s.transformer);
  s.empty_cache();
  return latents;
}

at::Tensor FluxPipeline::decode(const at::Tensor& latents, int width, int height) {
  std::vector<at::Tensor> images;
  for (int64_t b = 0; b < latents.size(0); ++b) images.push_back(decode_image(latents, b, width, height));
  finish_decode();
  const c10::InferenceMode inference;
  return at::cat(images, 0);
}

at::Tensor FluxPipeline::decode_image(const at::Tensor& latents, int64_t index, int width, int height,
                                      const std::optional<models::vae::ExactTileOptions>& tiles) {
  State& s = *state_;
  FLUXBATCH_CHECK(latents.dim() == 3 && index >= 0 && index < latents.size(0), InputError,
                  "decode_image: image " + std::to_string(index) + " of packed latents [B, S, C]");
  const c10::InferenceMode inference;
  const auto size = sampling::latent_size(height, width);
  s.load_denoisers();
  s.visit(*s.vae);
  // FluxPipeline: unpack, latents / scaling_factor + shift_factor, vae.decode.
  const at::Tensor unpacked = sampling::unpack_latents(latents.narrow(0, index, 1), size);
  const at::Tensor scaled = models::vae::unscale_latents(unpacked.to(s.options.device), s.vae->config());
  return tiles ? s.vae->decode_exact_tiled(scaled, *tiles) : s.vae->decode(scaled);  // [1, 3, H, W]
}

void FluxPipeline::finish_decode() {
  State& s = *state_;
  if (s.vae) s.leave(*s.vae);
  s.empty_cache();
}

int64_t FluxPipeline::vae_scale_factor() const { return state_->vae_config.scale_factor(); }

at::Tensor FluxPipeline::generate(const std::vector<std::string>& prompts, int max_sequence_length,
                                  const DenoiseRequest& request, const sampling::StepCallback& on_step) {
  const PromptEmbeddings embeddings = encode_prompts(prompts, max_sequence_length);
  const at::Tensor latents = denoise(embeddings, request, on_step);
  const c10::InferenceMode inference;
  return sampling::postprocess_uint8(decode(latents, request.width, request.height));
}

void FluxPipeline::release_text_encoders() { state_->free_text_encoders(); }

bool FluxPipeline::text_encoders_loaded() const { return state_->clip && state_->t5; }

void FluxPipeline::load_text_encoders() { state_->load_text_encoders(); }

void FluxPipeline::load_denoisers() { state_->load_denoisers(); }

void FluxPipeline::release_denoisers() { state_->free_denoisers(); }

bool FluxPipeline::denoisers_loaded() const { return state_->transformer && state_->vae; }

void FluxPipeline::hold_text_encoders(bool hold) { state_->text_held = hold; }

std::optional<int> FluxPipeline::stream_more_t5_blocks() {
  State& s = *state_;
  if (s.text_on_cpu || !s.t5) return std::nullopt;
  const auto it = s.streamed.find(s.t5.get());
  if (it == s.streamed.end() || it->second.resident == 0) return std::nullopt;
  const c10::InferenceMode inference;
  it->second.streamer->to_host();  // the next visit copies in the fewer blocks
  it->second.resident /= 2;
  s.empty_cache();
  return it->second.resident;
}

bool FluxPipeline::move_text_encoders_to_cpu() {
  State& s = *state_;
  if (s.text_on_cpu || s.options.device.is_cpu()) return false;
  s.text_on_cpu = true;
  // The weights are inference tensors (loaded under InferenceMode): moving them outside it fails.
  const c10::InferenceMode inference;
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(s.clip.get()), static_cast<torch::nn::Module*>(s.t5.get())}) {
    if (m == nullptr) continue;
    // Offload: the module points at its host copy once home; it stays there, no longer managed.
    if (const auto it = s.pinned.find(m); it != s.pinned.end()) {
      it->second->to_host();
      s.pinned.erase(it);
    }
    if (const auto it = s.streamed.find(m); it != s.streamed.end()) {
      it->second.streamer->to_host();
      s.t5->set_block_hook({});
      s.streamed.erase(it);
    }
    m->to(c10::Device(c10::kCPU));
  }
  s.empty_cache();
  return true;
}

bool FluxPipeline::text_encoders_on_cpu() const { return state_->text_on_cpu || state_->options.device.is_cpu(); }

std::vector<std::pair<std::string, const torch::nn::Module*>> FluxPipeline::components() const {
  const State& s = *state_;
  std::vector<std::pair<std::string, const torch::nn::Module*>> out;
  if (s.clip) out.emplace_back("text_encoder", s.clip.get());
  if (s.t5) out.emplace_back("text_encoder_2", s.t5.get());
  if (s.transformer) out.emplace_back("transformer", s.transformer.get());
  if (s.vae) out.emplace_back("vae", s.vae.get());
  return out;
}

}  // namespace fluxbatch::runtime
