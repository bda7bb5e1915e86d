// SHA-256 (FIPS 180-4), for cache keys and entry checksums: a key names its file by its hash, and
// a stored entry carries the hash of its bytes so a torn or damaged file is never used.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fluxbatch {

class Sha256 {
 public:
  // allow_hardware: use the x86 SHA extensions when the CPU has them (about 6x faster: a 165 MB LoRA
  // hashes in ~0.1 s instead of ~0.6 s); false forces the portable code (tests compare the two).
  explicit Sha256(bool allow_hardware = true);
  static bool hardware_available();
  void update(const void* data, size_t size);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  std::array<uint8_t, 32> digest();  // finishes; the object must not be updated afterwards

 private:
  void blocks(const uint8_t* p, size_t count);  // count whole 64-byte blocks
  bool hardware_ = false;
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes
};

std::array<uint8_t, 32> sha256(std::string_view bytes);
std::string sha256_hex(std::string_view bytes);  // 64 lowercase hex digits
std::string to_hex(const uint8_t* data, size_t size);

}  // namespace fluxbatch
