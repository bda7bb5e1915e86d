// "Did you mean ...?" for misspelt field and placeholder names.
#pragma once
#include <string>
#include <vector>

namespace fluxbatch::job::detail {

// The candidate closest to `word` (case-insensitive, transpositions count once), or "" when none
// is close enough to be a plausible typo.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace fluxbatch::job::detail
