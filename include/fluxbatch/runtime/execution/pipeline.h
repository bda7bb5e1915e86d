// FluxPipeline: FLUX.1 text-to-image stage by stage (encode prompts -> denoise -> decode), numerically
// the same as diffusers' FluxPipeline on the same weights and seeds.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fluxbatch/models/vae/vae_decoder.h"
#include "fluxbatch/nn/lora.h"
#include "fluxbatch/runtime/memory/memory_planner.h"
#include "fluxbatch/runtime/model_io/model_files.h"
#include "fluxbatch/sampling/euler.h"
#include "fluxbatch/sampling/schedule.h"

namespace torch::nn {
class Module;
}

namespace fluxbatch::runtime {

class LoraCatalog;

// What the reference recommends per variant: dev 28 steps, guidance 3.5, 512 T5 tokens; schnell
// 4 steps, no guidance (the model has no guidance input), 256 T5 tokens.
struct VariantDefaults {
  int steps = 28;
  double guidance = 3.5;
  int max_sequence_length = 512;
};
VariantDefaults variant_defaults(FluxVariant variant);

// "FLUX.1-dev (diffusers)", with ", fp8 compute" under --compute fp8 and then ", fp8 attention" under
// --attention fp8: the model as the manifest and the PNGs record it (resume compares it, so images of
// another compute or attention mode are rendered again).
std::string describe_model(const ModelFiles& files, bool compute_fp8, bool attention_fp8);

// The variant of the model at `model_path` from its configs / safetensors headers only (no weights
// read), so defaults can be applied before loading. ModelError as locate_model.
FluxVariant probe_variant(const std::string& model_path);

struct PipelineOptions {
  c10::Device device = c10::Device(c10::kCPU);
  c10::ScalarType dtype = c10::kFloat;  // weights and activations (bf16 is the CUDA default)
  // kDevice: every component loaded by the constructor and kept on the device. kStaged: nothing
  // heavy loaded up front; encode_prompts loads CLIP + T5 (freeing the transformer and VAE), denoise
  // and decode load the transformer + VAE (freeing CLIP and T5), from disk. kOffload: every component
  // loaded up front into pinned host memory, copied to the device for its stage only (diffusers'
  // enable_model_cpu_offload; the trip back costs nothing, the host copy is kept).
  // kStream: as kOffload, except that the transformer's first `resident_blocks` blocks (double blocks,
  // then single blocks) are copied in for the denoise stage with its non-block parts, and every other
  // block is streamed through a ring of `stream_slots` device buffers at each step (nn::BlockStreamer);
  // T5's the same way for the encode stage with `t5_resident_blocks` of its blocks resident.
  Residency residency = Residency::kDevice;
  int resident_blocks = 0;
  int t5_resident_blocks = 0;
  int stream_slots = 2;
  // Keep CLIP and T5 after encoding. Off: they are freed after each encode_prompts() and loaded
  // again, from disk, by the next one.
  bool keep_text_encoders = true;
  // Quantize the transformer's Linear weights to NF4 while loading (diffusers + bitsandbytes
  // load_in_4bit nf4, without double quantization), tensor by tensor. A checkpoint that already is
  // bitsandbytes NF4 is used as it is, with or without this flag.
  bool quantize_nf4 = false;
  // The same for T5's Linear weights except the feed-forward `wo` (transformers' bnb quantizer keeps
  // them: models::t5::t5_linear_is_quantized). Separate so a transformer-only comparison stays possible.
  bool quantize_t5_nf4 = false;
  // --compute fp8: the transformer blocks' projections (models::flux::computes_in_fp8) run fp8 GEMMs with
  // per-token activation scales. Their weights become per-channel e4m3 at load (quantized from dense or
  // NF4 weights on the device, tensor by tensor, or taken as stored from fp8 checkpoints); with
  // fp8_from_nf4 an NF4 transformer stays NF4 and each layer is turned into fp8 at each call instead (for
  // budgets that cannot hold ~11.9 GB of fp8 weights). The CLI allows it on compute capability 8.9+ only;
  // elsewhere (the CPU) it runs the fp32 reference of the fp8 arithmetic, for tests.
  bool compute_fp8 = false;
  bool fp8_from_nf4 = false;
  // --attention fp8 (with compute_fp8 only; InputError otherwise): every block's attention through
  // ops::fp8_attention (cuDNN: q, k, v and the output in e4m3 with one scale per image). The CLI allows it
  // where ops::fp8_attention_supported; elsewhere (the CPU) the op's reference runs, for tests.
  bool attention_fp8 = false;
  // Replay a CUDA graph of the transformer step from the second step of each denoise call on
  // (execution::GraphedDenoiser); false runs every step eagerly. Ignored on the CPU.
  bool cuda_graphs = true;
  // The job's LoRAs (runtime/lora/lora_catalog.h): attached as side paths to the transformer and CLIP
  // for the images whose DenoiseRequest::loras / encode_prompts' text_loras name them. Null: none.
  std::shared_ptr<const LoraCatalog> loras;
  // Merge a batch's LoRAs into the transformer's weights instead of side paths, when every image of the
  // batch has the same LoRAs and the transformer is dense (not NF4, not --compute fp8) and not offloaded
  // (else side paths). The originals are kept in host memory and put back exactly when the set changes.
  bool merge_loras = false;
};

// Prompt embeddings, one row per prompt, in the pipeline dtype on its device.
struct PromptEmbeddings {
  at::Tensor prompt_embeds;  // [B, L, joint_attention_dim] T5 last hidden state
  at::Tensor pooled;         // [B, pooled_projection_dim] CLIP pooled output
};

// One denoising batch. Every image shares size and step count; seed and guidance are per image.
struct DenoiseRequest {
  int width = 1024;
  int height = 1024;
  int steps = 28;
  std::vector<uint64_t> seeds;   // one per image (the batch size)
  std::vector<double> guidance;  // one per image; ignored by models without a guidance embedder
  // The transformer LoRAs of each image (PipelineOptions::loras' adapters); empty or all-empty: none.
  std::vector<nn::LoraSet> loras;
};

class FluxPipeline {
 public:
  // Loads the model at `model_path`: any layout runtime::locate_model accepts (diffusers folder,
  // BFL/ComfyUI single files, all-in-one file). Variant and sizes come from the model's configs; the
  // scheduler from scheduler/scheduler_config.json, else the variant's built-in one. Weights load
  // here unless options.residency is kStaged (then at their stage). ModelError / DeviceError.
  FluxPipeline(const std::string& model_path, const PipelineOptions& options);
  ~FluxPipeline();
  FluxPipeline(const FluxPipeline&) = delete;
  FluxPipeline& operator=(const FluxPipeline&) = delete;

  FluxVariant variant() const;
  std::string description() const;  // e.g. "FLUX.1-dev (diffusers)"
  const ModelFiles& files() const;
  const sampling::SchedulerConfig& scheduler_config() const;
  const PipelineOptions& options() const;
  int64_t latent_channels() const;  // transformer in_channels / 4

  // Stage 1. Each distinct prompt is encoded once, alone (so its embedding never depends on the
  // rest of the batch); truncation by either tokenizer is logged as a warning.
  // `text_loras`: CLIP LoRAs (PipelineOptions::loras' adapters) for every prompt of the call.
  PromptEmbeddings encode_prompts(const std::vector<std::string>& prompts, int max_sequence_length,
                                  const nn::LoraSet& text_loras = {});

  // Stage 2: seeded noise -> flow-match Euler over the transformer. Returns packed latents
  // [B, S, 4 * latent_channels] on the device. `on_step` sees each step's latents.
  at::Tensor denoise(const PromptEmbeddings& embeddings, const DenoiseRequest& request,
                     const sampling::StepCallback& on_step = {});

  // Stage 3: packed latents -> VAE output [B, 3, H, W] in the pipeline dtype (before postprocess).
  // Images are decoded one at a time, which bounds memory and keeps them batch-independent.
  at::Tensor decode(const at::Tensor& latents, int width, int height);

  // Stage 3 one image at a time: image `index` of packed latents [B, S, C] -> [1, 3, H, W] in the
  // pipeline dtype. `tiles`: the exact tiled decode (VaeDecoderImpl::decode_exact_tiled: the same
  // image up to rounding), for images whose whole decode does not fit. Leaves the VAE on the device
  // and the cache as it is; finish_decode() ends the stage.
  at::Tensor decode_image(const at::Tensor& latents, int64_t index, int width, int height,
                          const std::optional<models::vae::ExactTileOptions>& tiles = std::nullopt);
  void finish_decode();  // VAE home again (offload) and the device cache emptied
  int64_t vae_scale_factor() const;  // pixels per latent

  // All three stages plus postprocess: [B, H, W, 3] uint8 on the CPU.
  at::Tensor generate(const std::vector<std::string>& prompts, int max_sequence_length,
                      const DenoiseRequest& request, const sampling::StepCallback& on_step = {});

  // While held, encode_prompts leaves CLIP and T5 on the device between calls, where offload would
  // move them home after each (an encode stage of many prompts would copy T5 across the bus per
  // prompt). release_text_encoders() ends the hold.
  void hold_text_encoders(bool hold);

  // Frees CLIP and T5 now (a later encode_prompts loads them again) and empties the device cache.
  void release_text_encoders();
  bool text_encoders_loaded() const;

  // The encode stage's first out-of-memory step under kStream: T5 keeps half as many blocks resident
  // (rounded down, to none) and streams the rest, its device copies let go now. Returns the new
  // resident count; nullopt when T5 is not streamed on the device or none of its blocks is resident.
  // Streaming changes no value: the embeddings stay the device's, byte for byte.
  std::optional<int> stream_more_t5_blocks();

  // The out-of-memory fallback of the encode stage: from now on CLIP and T5 run on the CPU (moved
  // there if loaded, loaded there otherwise); encode_prompts still returns embeddings on the
  // device. False when they already run on the CPU (a CPU pipeline, or moved before).
  bool move_text_encoders_to_cpu();
  bool text_encoders_on_cpu() const;

  // Loads CLIP + T5, or the transformer + VAE, now rather than on first use (no-op when loaded; under
  // kStaged the other pair is freed first), so that a measurement of the stage excludes the load.
  void load_text_encoders();
  void load_denoisers();

  // Frees the transformer and the VAE now (a later denoise or decode loads them again) and empties
  // the device cache.
  void release_denoisers();
  bool denoisers_loaded() const;

  // The loaded components by name ("text_encoder", "text_encoder_2", "transformer", "vae") for
  // memory accounting (runtime::module_bytes); components not loaded (or released) are absent.
  std::vector<std::pair<std::string, const torch::nn::Module*>> components() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fluxbatch::runtime
