#include "tokenizers/t5_tokenizer_json.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "fluxbatch/core/error.h"

namespace fluxbatch::tokenizers::detail {
namespace {

constexpr const char* kWho = "T5 tokenizer";
constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's word boundary

// Just enough of the protobuf wire format for sentencepiece_model.proto's ModelProto.
class ProtoWriter {
 public:
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  void tag(int field, int wire_type) { varint((static_cast<std::uint64_t>(field) << 3) | static_cast<unsigned>(wire_type)); }
  void int_field(int field, std::int64_t v) {
    tag(field, 0);
    varint(static_cast<std::uint64_t>(v));  // negative int32 values are sign-extended to 10 bytes
  }
  void bytes_field(int field, const std::string& bytes) {
    tag(field, 2);
    varint(bytes.size());
    out_ += bytes;
  }
  void float_field(int field, float v) {
    tag(field, 5);
    char raw[4];
    std::memcpy(raw, &v, 4);  // little-endian hosts only, like the rest of the file formats here
    out_.append(raw, 4);
  }
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

enum PieceType { kNormal = 1, kUnknown = 2, kControl = 3 };

struct Piece {
  std::string text;
  float score = 0.0f;
  int type = kNormal;
};

struct Normalization {
  std::string charsmap;        // Precompiled's bytes; empty: none
  bool collapses_spaces = false;  // Replace(" {2,}", "▁")
};

[[noreturn]] void refuse(const std::string& where, const std::string& what) {
  throw ModelError(std::string(kWho) + ": " + where + ": " + what +
                   "; fluxbatch reads T5's Unigram tokenizer.json with a Precompiled normalizer (optionally with "
                   "Strip and Replace(\" {2,}\", \"\xE2\x96\x81\")) and WhitespaceSplit + Metaspace, as transformers "
                   "writes it; or put T5's spiece.model in the folder");
}

Normalization read_normalizer(const nlohmann::json& root, const std::string& where) {
  Normalization n;
  const nlohmann::json& node = root.contains("normalizer") ? root["normalizer"] : nlohmann::json();
  int precompiled = 0;
  for (const nlohmann::json& member : flatten_sequence(node, "normalizers")) {
    const std::string type = member.is_object() ? member.value("type", "") : "";
    if (type == "Precompiled") {
      ++precompiled;
      const auto& map = member.contains("precompiled_charsmap") ? member["precompiled_charsmap"] : nlohmann::json();
      if (map.is_string()) {
        n.charsmap = decode_base64(map.get<std::string>(), where + ": precompiled_charsmap");
      } else if (!map.is_null()) {
        refuse(where, "precompiled_charsmap is not a base64 string");
      }
    } else if (type == "Strip") {
      // SentencePiece drops leading and trailing whitespace itself.
    } else if (type == "Replace" && member.contains("pattern") && member["pattern"].is_object() &&
               member["pattern"].value("Regex", "") == " {2,}" && member.value("content", "") == kMetaspace) {
      n.collapses_spaces = true;
    } else {
      refuse(where, "it declares the normalizer " + describe_component(node));
    }
  }
  if (precompiled > 1) refuse(where, "it declares the normalizer " + describe_component(node));
  return n;
}

struct PreTokenization {
  bool whitespace_split = false;
  std::string prepend_scheme = "always";
};

PreTokenization read_pre_tokenizer(const nlohmann::json& root, const std::string& where) {
  PreTokenization p;
  const nlohmann::json& node = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : nlohmann::json();
  int metaspace = 0;
  for (const nlohmann::json& member : flatten_sequence(node, "pretokenizers")) {
    const std::string type = member.is_object() ? member.value("type", "") : "";
    if (type == "WhitespaceSplit" && metaspace == 0) {
      p.whitespace_split = true;
    } else if (type == "Metaspace" && member.value("replacement", "") == kMetaspace && member.value("split", true)) {
      ++metaspace;
      if (member.contains("prepend_scheme") && member["prepend_scheme"].is_string()) {
        p.prepend_scheme = member["prepend_scheme"].get<std::string>();
      } else if (member.contains("add_prefix_space") && member["add_prefix_space"].is_boolean()) {
        p.prepend_scheme = member["add_prefix_space"].get<bool>() ? "always" : "never";  // tokenizers < 0.14
      }
      if (p.prepend_scheme != "always" && p.prepend_scheme != "first" && p.prepend_scheme != "never") {
        refuse(where, "Metaspace prepend_scheme \"" + p.prepend_scheme + "\" is unknown");
      }
    } else {
      refuse(where, "it declares the pre-tokenizer " + describe_component(node));
    }
  }
  if (metaspace != 1) refuse(where, "it declares the pre-tokenizer " + describe_component(node));
  return p;
}

std::string model_proto(const std::vector<Piece>& pieces, const Normalization& norm, bool dummy_prefix,
                        const T5JsonModel& ids) {
  ProtoWriter model;
  for (const Piece& piece : pieces) {
    ProtoWriter p;
    p.bytes_field(1, piece.text);
    p.float_field(2, piece.score);
    p.int_field(3, piece.type);
    model.bytes_field(1, p.str());
  }
  ProtoWriter trainer;
  trainer.int_field(3, 1);  // model_type UNIGRAM
  trainer.int_field(4, static_cast<std::int64_t>(pieces.size()));
  trainer.int_field(40, ids.unk_id);
  trainer.int_field(41, -1);  // T5 has no BOS
  trainer.int_field(42, ids.eos_id < static_cast<std::int64_t>(pieces.size()) ? ids.eos_id : -1);
  trainer.int_field(43, ids.pad_id < static_cast<std::int64_t>(pieces.size()) ? ids.pad_id : -1);
  trainer.bytes_field(45, pieces[static_cast<size_t>(ids.unk_id)].text);
  model.bytes_field(2, trainer.str());
  ProtoWriter normalizer;
  normalizer.bytes_field(1, norm.charsmap.empty() ? "identity" : "tokenizer_json_precompiled");
  if (!norm.charsmap.empty()) normalizer.bytes_field(2, norm.charsmap);
  normalizer.int_field(3, dummy_prefix ? 1 : 0);  // add_dummy_prefix
  normalizer.int_field(4, 1);                     // remove_extra_whitespaces
  normalizer.int_field(5, 1);                     // escape_whitespaces
  model.bytes_field(3, normalizer.str());
  return model.str();
}

}  // namespace

T5JsonModel read_t5_tokenizer_json(const std::filesystem::path& path) {
  const std::string where = path.string();
  const nlohmann::json root = read_tokenizer_json(path, kWho);
  const nlohmann::json& m = root["model"];
  if (m.value("type", "") != "Unigram") {
    refuse(where, "its model is " + describe_component(m) + ", not Unigram");
  }
  if (m.value("byte_fallback", false)) refuse(where, "its Unigram model uses byte_fallback");
  if (!m.contains("vocab") || !m["vocab"].is_array() || m["vocab"].empty()) {
    throw ModelError(std::string(kWho) + ": " + where + ": the Unigram model has no \"vocab\" list of [piece, score]");
  }
  T5JsonModel out;
  out.added = added_tokens(root, where);
  std::vector<Piece> pieces;
  pieces.reserve(m["vocab"].size());
  std::map<std::string, std::int64_t> ids;
  for (const auto& entry : m["vocab"]) {
    if (!entry.is_array() || entry.size() != 2 || !entry[0].is_string() || !entry[1].is_number()) {
      throw ModelError(std::string(kWho) + ": " + where + ": vocab entry " + entry.dump().substr(0, 60) +
                       " is not [piece, score]");
    }
    Piece piece;
    piece.text = entry[0].get<std::string>();
    piece.score = static_cast<float>(entry[1].get<double>());
    ids.emplace(piece.text, static_cast<std::int64_t>(pieces.size()));
    pieces.push_back(std::move(piece));
  }
  const auto count = static_cast<std::int64_t>(pieces.size());
  if (!m.contains("unk_id") || !m["unk_id"].is_number_integer() || m["unk_id"].get<std::int64_t>() < 0 ||
      m["unk_id"].get<std::int64_t>() >= count) {
    refuse(where, "its Unigram model has no unk_id within the vocabulary");
  }
  out.unk_id = m["unk_id"].get<std::int64_t>();
  pieces[static_cast<size_t>(out.unk_id)].type = kUnknown;
  out.vocab_size = count;
  for (const AddedToken& token : out.added) {
    // Added tokens are matched in the raw text, never produced by the model from text.
    if (token.id < count && token.id != out.unk_id) pieces[static_cast<size_t>(token.id)].type = kControl;
    out.vocab_size = std::max(out.vocab_size, token.id + 1);
    ids.emplace(token.content, token.id);
  }
  const auto id_of = [&](const char* token) {
    const auto it = ids.find(token);
    return it == ids.end() ? std::int64_t{-1} : it->second;
  };
  out.eos_id = id_of("</s>");
  out.pad_id = id_of("<pad>");
  if (out.eos_id < 0 || out.pad_id < 0) {
    throw ModelError(std::string(kWho) + ": " + where + " defines no </s> or <pad> token (T5 needs both)");
  }
  const Normalization norm = read_normalizer(root, where);
  const PreTokenization pre = read_pre_tokenizer(root, where);
  // Without WhitespaceSplit, only the Replace normalizer keeps runs of spaces from becoming "▁" pieces,
  // which SentencePiece (remove_extra_whitespaces) never produces.
  if (!pre.whitespace_split && !norm.collapses_spaces) {
    refuse(where, "it declares the normalizer " + describe_component(root.value("normalizer", nlohmann::json())) +
                      " with the pre-tokenizer " + describe_component(root.value("pre_tokenizer", nlohmann::json())) +
                      " (runs of spaces would become separate pieces)");
  }
  out.split_unicode_whitespace = pre.whitespace_split;
  out.spm_proto = model_proto(pieces, norm, pre.prepend_scheme != "never", out);
  if (pre.prepend_scheme == "first") out.spm_proto_no_prefix = model_proto(pieces, norm, false, out);
  return out;
}

}  // namespace fluxbatch::tokenizers::detail
