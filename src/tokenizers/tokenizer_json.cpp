#include "tokenizers/tokenizer_json.h"

#include <fstream>
#include <sstream>

#include "fluxbatch/core/error.h"

namespace fluxbatch::tokenizers::detail {

nlohmann::json read_tokenizer_json(const std::filesystem::path& path, const std::string& who) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(who + ": cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(who + ": " + path.string() + " is not valid JSON: " + e.what());
  }
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    throw ModelError(who + ": " + path.string() + " has no \"model\" object (not an HF tokenizers tokenizer.json)");
  }
  return root;
}

std::string describe_component(const nlohmann::json& node) {
  if (node.is_null()) return "none";
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) return node.dump().substr(0, 60);
  const std::string type = node["type"].get<std::string>();
  if (type != "Sequence") return type;
  std::string out = "Sequence[";
  for (const char* key : {"normalizers", "pretokenizers"}) {
    if (!node.contains(key) || !node[key].is_array()) continue;
    bool first = true;
    for (const auto& member : node[key]) {
      out += (first ? "" : ", ") + describe_component(member);
      first = false;
    }
  }
  return out + "]";
}

std::vector<nlohmann::json> flatten_sequence(const nlohmann::json& node, const char* members_key) {
  if (node.is_null()) return {};
  if (node.is_object() && node.value("type", "") == "Sequence" && node.contains(members_key) &&
      node[members_key].is_array()) {
    return std::vector<nlohmann::json>(node[members_key].begin(), node[members_key].end());
  }
  return {node};
}

std::vector<AddedToken> added_tokens(const nlohmann::json& root, const std::string& where) {
  std::vector<AddedToken> out;
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return out;
  if (!root["added_tokens"].is_array()) throw ModelError(where + ": \"added_tokens\" is not an array");
  for (const auto& entry : root["added_tokens"]) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() || entry["id"].get<std::int64_t>() < 0 ||
        !entry.contains("content") || !entry["content"].is_string() || entry["content"].get<std::string>().empty()) {
      throw ModelError(where + ": malformed \"added_tokens\" entry " + entry.dump().substr(0, 80));
    }
    AddedToken token;
    token.id = entry["id"].get<std::int64_t>();
    token.content = entry["content"].get<std::string>();
    token.special = entry.value("special", false);
    token.lstrip = entry.value("lstrip", false);
    token.rstrip = entry.value("rstrip", false);
    out.push_back(std::move(token));
  }
  return out;
}

std::string decode_base64(const std::string& text, const std::string& where) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  std::uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    const int v = value(c);
    if (v < 0) throw ModelError(where + ": not base64 (character '" + std::string(1, c) + "')");
    buffer = (buffer << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xFF));
    }
  }
  return out;
}

}  // namespace fluxbatch::tokenizers::detail
