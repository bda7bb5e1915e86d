// T5EncoderModel (transformers 5.24 semantics, SDPA attention path) for FLUX's text_encoder_2.
// Registered names equal the transformers checkpoint keys: shared.weight, encoder.block.N.layer.0.
// SelfAttention.{q,k,v,o}.weight, encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight,
// encoder.block.N.layer.{0,1}.layer_norm.weight, encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight,
// encoder.final_layer_norm.weight.
#pragma once
#include "fluxbatch/models/t5/config.h"
#include "fluxbatch/nn/block_hook.h"
#include "fluxbatch/nn/weights.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

namespace fluxbatch::models::layers {
class EmbeddingImpl;
}

namespace fluxbatch::models::t5 {

class T5StackImpl;

// Checkpoint keys a T5 file may hold that the encoder does not use (decoder half, LM head).
std::vector<std::string> t5_ignored_prefixes();

// Maps checkpoint dialects onto the module's names: `encoder.embed_tokens.weight` is tied to
// `shared.weight` (dropped when both are present, renamed when it is the only copy).
void canonicalize_t5_checkpoint(nn::TensorMap& weights);

// True for the Linear layers transformers' bitsandbytes quantizer converts in a T5 encoder: all of
// them except the feed-forward output projections `...DenseReluDense.wo` (T5's
// _keep_in_fp32_modules, which get_modules_to_not_convert always skips). `name` is the module path.
bool t5_linear_is_quantized(const std::string& name);

class T5EncoderModelImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device); load them afterwards.
  explicit T5EncoderModelImpl(const T5Config& config, const at::TensorOptions& options = at::kFloat);

  // input_ids: [B, L] int64 -> last_hidden_state [B, L, d_model]. No attention mask: padding
  // tokens attend and are attended to, as FluxPipeline calls it.
  at::Tensor forward(const at::Tensor& input_ids);

  // transformers keeps every FF `wo` in fp32 when a model is loaded in fp16 (_keep_in_fp32_modules);
  // call after loading fp16 weights to reproduce that (activations are then upcast before `wo`).
  void keep_wo_in_float32();

  const T5Config& config() const { return config_; }
  // Block streaming: the hook runs around each of the encoder's blocks (block 0 before the relative
  // position bias, which its attention holds, is computed); blocks() lists them in that order.
  void set_block_hook(nn::BlockHook hook);
  std::vector<torch::nn::Module*> blocks();

 private:
  T5Config config_;
  std::shared_ptr<layers::EmbeddingImpl> shared_;
  std::shared_ptr<T5StackImpl> encoder_;
};
TORCH_MODULE(T5EncoderModel);

// Loads `weights` (canonicalized) into `t5`, quantizing every Linear weight t5_linear_is_quantized
// names to NF4 on the way in, as transformers' T5EncoderModel.from_pretrained(...,
// quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")) does on a GPU:
// from bf16, blocksize 64, no double quantization, bnb's CUDA rounding, on options.device. One tensor
// at a time from the mapped file, so host memory never holds a converted copy. The rest (embeddings,
// norms, `wo`) goes through nn::load_state. Build `t5` on the CPU: its dense Linear weights are
// dropped before anything touches their pages. Returns the scratch buffer the NF4 layers share
// (null when nothing was quantized). ModelError as nn::load_state.
std::shared_ptr<at::Tensor> load_t5_quantizing_nf4(T5EncoderModelImpl& t5, const nn::TensorMap& weights,
                                                   const nn::LoadOptions& options);

}  // namespace fluxbatch::models::t5
