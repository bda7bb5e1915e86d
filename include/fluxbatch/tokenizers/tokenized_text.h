// The result of tokenizing one prompt: a fixed-length id row plus whether the prompt was cut.
#pragma once
#include <cstdint>
#include <vector>

namespace fluxbatch::tokenizers {

struct TokenizedText {
  std::vector<std::int64_t> ids;  // exactly max_length ids: specials, content, padding
  bool truncated = false;         // content tokens were dropped to fit max_length
};

}  // namespace fluxbatch::tokenizers
