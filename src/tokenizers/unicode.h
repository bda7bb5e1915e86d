// UTF-8 and the few Unicode algorithms the CLIP tokenizer needs, matching HF tokenizers' normalizers.
#pragma once
#include <string>
#include <string_view>

namespace fluxbatch::tokenizers::unicode {

// Throws InputError naming `what` on malformed UTF-8.
std::u32string decode_utf8(std::string_view text, const char* what);
std::string encode_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t cp);

bool is_letter(char32_t cp);      // \p{L}
bool is_number(char32_t cp);      // \p{N}
bool is_whitespace(char32_t cp);  // the White_Space property (Oniguruma's \s)

std::u32string nfc(std::u32string_view text);
// Per-character full lower-case mapping (no context rules such as final sigma), like Rust's char::to_lowercase.
std::u32string to_lower(std::u32string_view text);

}  // namespace fluxbatch::tokenizers::unicode
