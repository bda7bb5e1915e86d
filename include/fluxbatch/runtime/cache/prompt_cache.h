// Prompt embeddings on disk, keyed by the text encoders' identity and the way they computed
// (cache_identity.h), the prompt and max_sequence_length: a job whose prompts were all encoded by an
// earlier one never loads CLIP or T5. What comes back is bit for bit what the encoders returned.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "fluxbatch/io/cache_store.h"

namespace fluxbatch::runtime {

class PromptCache {
 public:
  inline static const std::string kKind = "embeddings-v1";

  // `identity`: text_encoders_identity + compute_identity.
  PromptCache(std::shared_ptr<io::CacheStore> store, std::string identity);

  // (prompt_embeds [1, L, D], pooled [1, P]) on the CPU, or nothing. A stored entry whose shapes or
  // dtype do not parse counts as damaged and is not used.
  std::optional<std::pair<at::Tensor, at::Tensor>> find(const std::string& prompt, int max_sequence_length);
  void store(const std::string& prompt, int max_sequence_length, const at::Tensor& prompt_embeds,
             const at::Tensor& pooled);

 private:
  std::string key(const std::string& prompt, int max_sequence_length) const;
  std::shared_ptr<io::CacheStore> store_;
  std::string identity_;
};

}  // namespace fluxbatch::runtime
