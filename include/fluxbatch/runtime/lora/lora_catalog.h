// The LoRAs of a job: every distinct file read once, checked against the model before any weights load
// (every key must map onto a Linear of the model, shapes must fit), identified by content (SHA-256),
// and attached to the loaded models' Linears as side paths (nn/lora.h) for the images that use them.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fluxbatch/job/job_spec.h"
#include "fluxbatch/models/lora/lora_file.h"
#include "fluxbatch/nn/lora.h"
#include "fluxbatch/runtime/model_io/model_files.h"

namespace torch::nn {
class Module;
}

namespace fluxbatch::runtime {

// SHA-256 of the whole file, and A1111's short hash (the first 12 hex digits of the SHA-256 of what
// follows the safetensors header: what WebUI writes as "Lora hashes" and Civitai's AutoV3 looks up).
struct LoraHashes {
  std::string sha256;
  std::string short_hash;
};
LoraHashes lora_hashes(const std::string& path);

// The Linears of a module tree: name -> (in, out).
models::lora::LinearShapes linear_shapes(const torch::nn::Module& module);
// The model's transformer and CLIP Linears, from its configs only (modules built on the meta device).
models::lora::LinearShapes transformer_linear_shapes(const ModelFiles& model);
models::lora::LinearShapes text_encoder_linear_shapes(const ModelFiles& model);

struct LoraAdapter {
  int id = 0;
  std::string path;
  LoraHashes hashes;
  models::lora::LoraFile file;
};

class LoraCatalog {
 public:
  // Reads every distinct LoRA of `spec`'s items, checks it against `model`, and records each LoraRef's
  // sha256 and short hash. Every problem of every LoRA is collected first, then thrown as one
  // job::JobError naming where the LoRA was given: a missing or unreadable file, not a safetensors
  // LoRA, keys that map onto no module of the model (unless "strict": false: then they are dropped
  // with a warning), shapes that do not fit. Loads no model weights.
  static std::shared_ptr<LoraCatalog> load(job::JobSpec& spec, const ModelFiles& model);

  bool empty() const { return adapters_.empty(); }
  const std::vector<LoraAdapter>& adapters() const { return adapters_; }

  // The side paths of an image: its LoRAs as adapters of this catalog that touch `component`.
  nn::LoraSet set_for(const std::vector<job::LoraRef>& loras, models::lora::LoraComponent component) const;

  // Makes `model`'s Linears hold exactly the adapters `ids` of `component` (others removed), in `dtype`
  // on `device`. Cheap when they already do.
  void attach(torch::nn::Module& model, models::lora::LoraComponent component, const std::set<int>& ids,
              c10::ScalarType dtype, c10::Device device) const;

 private:
  std::vector<LoraAdapter> adapters_;
  std::map<std::string, int> by_path_;
};

}  // namespace fluxbatch::runtime
