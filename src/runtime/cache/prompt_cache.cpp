#include "fluxbatch/runtime/cache/prompt_cache.h"

#include <ATen/ATen.h>

#include <cstring>
#include <sstream>
#include <vector>

#include "fluxbatch/core/log.h"

namespace fluxbatch::runtime {
namespace {

// Payload: one text line "<dtype> <dims of prompt_embeds> | <dims of pooled>\n", then both tensors'
// bytes (contiguous, native byte order).
std::string header(const at::Tensor& a, const at::Tensor& b) {
  std::string out = std::to_string(static_cast<int>(a.scalar_type()));
  for (const int64_t d : a.sizes()) out += " " + std::to_string(d);
  out += " |";
  for (const int64_t d : b.sizes()) out += " " + std::to_string(d);
  return out + "\n";
}

}  // namespace

PromptCache::PromptCache(std::shared_ptr<io::CacheStore> store, std::string identity)
    : store_(std::move(store)), identity_(std::move(identity)) {}

std::string PromptCache::key(const std::string& prompt, int max_sequence_length) const {
  return "embedding\n" + identity_ + "\nmax_sequence_length " + std::to_string(max_sequence_length) + "\nprompt " +
         prompt;
}

std::optional<std::pair<at::Tensor, at::Tensor>> PromptCache::find(const std::string& prompt, int max_sequence_length) {
  const std::optional<std::string> payload = store_->get(kKind, key(prompt, max_sequence_length));
  if (!payload) return std::nullopt;
  const size_t newline = payload->find('\n');
  std::istringstream head(payload->substr(0, newline == std::string::npos ? 0 : newline));
  int dtype = -1;
  std::vector<int64_t> a, b;
  std::string word;
  bool second = false;
  head >> dtype;
  while (head >> word) {
    if (word == "|") {
      second = true;
    } else if (!word.empty() && word.size() < 12 && word.find_first_not_of("0123456789") == std::string::npos) {
      (second ? b : a).push_back(std::stoll(word));
    } else {
      a.clear();  // not ours: refused below
      break;
    }
  }
  const bool shapes = newline != std::string::npos && a.size() == 3 && b.size() == 2 && a[0] == 1 && b[0] == 1 &&
                      a[1] == max_sequence_length && dtype >= 0 &&
                      dtype < static_cast<int>(c10::ScalarType::NumOptions);
  if (!shapes) {
    log::warn("prompt cache: an entry for \"" + prompt.substr(0, 40) + "\" has no usable header; encoding it again");
    return std::nullopt;
  }
  const auto options = at::TensorOptions().dtype(static_cast<c10::ScalarType>(dtype));
  at::Tensor embeds = at::empty(a, options);
  at::Tensor pooled = at::empty(b, options);
  if (payload->size() - newline - 1 != embeds.nbytes() + pooled.nbytes()) {
    log::warn("prompt cache: an entry for \"" + prompt.substr(0, 40) + "\" has the wrong size; encoding it again");
    return std::nullopt;
  }
  std::memcpy(embeds.data_ptr(), payload->data() + newline + 1, embeds.nbytes());
  std::memcpy(pooled.data_ptr(), payload->data() + newline + 1 + embeds.nbytes(), pooled.nbytes());
  return std::make_pair(embeds, pooled);
}

void PromptCache::store(const std::string& prompt, int max_sequence_length, const at::Tensor& prompt_embeds,
                        const at::Tensor& pooled) {
  const at::Tensor a = prompt_embeds.to(c10::Device(c10::kCPU)).contiguous();
  const at::Tensor b = pooled.to(c10::Device(c10::kCPU)).contiguous();
  std::string payload = header(a, b);
  const size_t at = payload.size();
  payload.resize(at + a.nbytes() + b.nbytes());
  std::memcpy(payload.data() + at, a.data_ptr(), a.nbytes());
  std::memcpy(payload.data() + at + a.nbytes(), b.data_ptr(), b.nbytes());
  store_->put(kKind, key(prompt, max_sequence_length), payload);
}

}  // namespace fluxbatch::runtime
