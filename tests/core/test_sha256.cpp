#include <catch2/catch_test_macros.hpp>

#include <string>

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
