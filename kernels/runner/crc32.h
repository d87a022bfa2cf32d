// CRC-32 (IEEE 802.3, the polynomial of zip and PNG): one implementation for the runner's PNG
// writer and its package check.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace fastflow {

// The CRC-32 of `n` bytes at `data`, continuing from `crc` (0 to start).
inline uint32_t crc32(const uint8_t* data, std::size_t n, uint32_t crc = 0) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

}  // namespace fastflow
