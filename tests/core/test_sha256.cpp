#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <string>
#include <string_view>

#include "fluxbatch/core/sha256.h"

TEST_CASE("SHA-256 matches the FIPS 180-4 test vectors, in one piece or many", "[core][sha256]") {
  using fluxbatch::sha256_hex;
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(sha256_hex(two_blocks) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  fluxbatch::Sha256 pieces;
  for (size_t at = 0; at < million.size(); at += 997) pieces.update(million.substr(at, 997));
  const auto d = pieces.digest();
  CHECK(fluxbatch::to_hex(d.data(), d.size()) == sha256_hex(million));
}

TEST_CASE("SHA-256: the x86 SHA-extension path equals the portable one", "[core][sha256]") {
  // On a CPU without the extensions both objects run the portable code; say so rather than pass quietly.
  if (!fluxbatch::Sha256::hardware_available()) WARN("this CPU has no SHA extensions: only the portable path ran");
  std::string data(300000, '\0');
  uint32_t state = 12345;
  for (char& c : data) {
    state = state * 1664525u + 1013904223u;
    c = static_cast<char>(state >> 24);
  }
  for (size_t length : {size_t{0}, size_t{55}, size_t{56}, size_t{64}, size_t{119}, size_t{128}, size_t{4097}, data.size()}) {
    fluxbatch::Sha256 hardware(true), portable(false);
    // Uneven pieces, so whole blocks come both from the buffer and straight from the input.
    for (size_t at = 0; at < length; at += 61) {
      const std::string_view piece(data.data() + at, std::min<size_t>(61, length - at));
      hardware.update(piece);
      portable.update(piece);
    }
    INFO("length " << length);
    CHECK(hardware.digest() == portable.digest());
  }
  const std::string million(1000000, 'a');
  fluxbatch::Sha256 portable(false);
  portable.update(million);
  const auto d = portable.digest();
  CHECK(fluxbatch::to_hex(d.data(), d.size()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
