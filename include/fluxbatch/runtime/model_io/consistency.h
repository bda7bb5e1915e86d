// Do the components of a model folder belong together? Checked when a model is opened, from configs,
// safetensors headers and the tokenizers only, before any stage runs or any weight loads, so that a
// folder mixed from different models fails at once with one line naming both files, instead of an
// index error in every item or a shape error after minutes of loading.
#pragma once
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace fluxbatch::tokenizers {
class ClipTokenizer;
class T5Tokenizer;
}  // namespace fluxbatch::tokenizers

namespace fluxbatch::runtime {

// ModelError (one line: both files, the two numbers, what to do) unless:
//   - each tokenizer's largest id fits its text encoder's embedding table (rows from the weights);
//   - T5's width (its embedding's columns) is the transformer's joint_attention_dim;
//   - CLIP's hidden size (what the pipeline pools) is the transformer's pooled_projection_dim, and it has
//     the 77 positions the pipeline encodes;
//   - the VAE's latent channels (decoder.conv_in) times 4 are the transformer's in_channels;
//   - every config.json agrees with its own weights on those sizes, and the transformer's
//     guidance_embeds with whether its weights have a guidance embedder (dev vs schnell).
void check_components(const ModelFiles& model, const tokenizers::ClipTokenizer& clip_tokenizer,
                      const tokenizers::T5Tokenizer& t5_tokenizer);

// A FLUX.1-schnell transformer has no guidance input: ModelError naming the first item that sets
// "guidance" (job file:line:column) and the transformer file, unless `variant` is dev or no item
// sets it (the built-in default is not a request).
void check_guidance(const ModelFiles& model, FluxVariant variant, const std::vector<const job::RenderItem*>& items);

}  // namespace fluxbatch::runtime
