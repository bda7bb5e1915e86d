// Reading an HF tokenizers "tokenizer.json" (what transformers >= 5 saves in place of vocab.json /
// merges.txt / spiece.model): the file itself, and the parts of it both tokenizers need to check.
// Internal to src/tokenizers.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fluxbatch::tokenizers::detail {

// The file's JSON object; ModelError naming `who` and the file when it cannot be read or parsed.
nlohmann::json read_tokenizer_json(const std::filesystem::path& path, const std::string& who);

// `node`'s "type" and, for a "Sequence", its members' types: "Sequence[NFC, Replace, Lowercase]";
// "none" for null. For messages that say what a file declares.
std::string describe_component(const nlohmann::json& node);

// The members of a "Sequence" normalizer / pre-tokenizer (key "normalizers" / "pretokenizers"), or
// the node itself when it is not a Sequence; empty for null.
std::vector<nlohmann::json> flatten_sequence(const nlohmann::json& node, const char* members_key);

// One "added_tokens" entry.
struct AddedToken {
  std::int64_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;  // swallows the whitespace before it
  bool rstrip = false;  // swallows the whitespace after it
};
// The file's "added_tokens" (ModelError naming `where` for a malformed entry).
std::vector<AddedToken> added_tokens(const nlohmann::json& root, const std::string& where);

// Standard base64 (RFC 4648, padding optional); ModelError naming `where` on a bad character.
std::string decode_base64(const std::string& text, const std::string& where);

}  // namespace fluxbatch::tokenizers::detail
