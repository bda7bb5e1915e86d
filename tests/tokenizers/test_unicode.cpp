#include <catch2/catch_test_macros.hpp>

#include "fluxbatch/core/error.h"
#include "tokenizers/unicode.h"

namespace uc = fluxbatch::tokenizers::unicode;

TEST_CASE("NFC composes, reorders marks, maps singletons and handles Hangul", "[tokenizers]") {
  CHECK(uc::nfc(U"e\u0301") == U"\u00E9");
  CHECK(uc::nfc(U"\u212B") == U"\u00C5");                  // ANGSTROM SIGN -> A with ring (singleton)
  CHECK(uc::nfc(U"\u1100\u1161\u11A8") == U"\uAC01");      // conjoining jamo -> one syllable
  CHECK(uc::nfc(U"q\u0307\u0323") == U"q\u0323\u0307");    // canonical order: below (220) before above (230)
  CHECK(uc::nfc(U"a\u0323\u0302") == U"\u1EAD");           // a + dot below + circumflex -> U+1EAD
  CHECK(uc::nfc(U"\u0344") == U"\u0308\u0301");            // excluded non-starter decomposition
  CHECK(uc::nfc(U"\u0301e") == U"\u0301e");                // a leading mark does not compose
  CHECK(uc::nfc(U"\uFB01") == U"\uFB01");                  // NFC keeps compatibility ligatures
}

TEST_CASE("lower-casing is per character and full (no final sigma)", "[tokenizers]") {
  CHECK(uc::to_lower(U"ABC \u00C9") == U"abc \u00E9");
  CHECK(uc::to_lower(U"\u0130") == U"i\u0307");
  CHECK(uc::to_lower(U"\u03A3\u039F\u03A3") == U"\u03C3\u03BF\u03C3");
}

TEST_CASE("character classes and UTF-8 round trip", "[tokenizers]") {
  CHECK(uc::is_letter(U'a'));
  CHECK(uc::is_letter(U'\u6771'));
  CHECK_FALSE(uc::is_letter(U'\u0301'));
  CHECK(uc::is_number(U'7'));
  CHECK(uc::is_number(U'\u00BD'));
  CHECK(uc::is_whitespace(U'\u3000'));
  CHECK_FALSE(uc::is_whitespace(U'\u200B'));
  const std::string text = "a\xC3\xA9\xE6\x9D\xB1\xF0\x9F\x90\xB1";
  CHECK(uc::decode_utf8(text, "t") == U"a\u00E9\u6771\U0001F431");
  CHECK(uc::encode_utf8(uc::decode_utf8(text, "t")) == text);
  CHECK_THROWS_AS(uc::decode_utf8("\xC0\x80", "t"), fluxbatch::InputError);      // overlong
  CHECK_THROWS_AS(uc::decode_utf8("\xED\xA0\x80", "t"), fluxbatch::InputError);  // surrogate
  CHECK_THROWS_AS(uc::decode_utf8("\xE6\x9D", "t"), fluxbatch::InputError);      // cut short
}
