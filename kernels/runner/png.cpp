#include "png.h"

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "crc32.h"
#include "error.h"
#include "io.h"

namespace fastflow {
namespace {

void put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void write32(std::string& f, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) f += static_cast<char>(v >> s);
}

// length, type, data, CRC-32 of type + data.
void chunk(std::string& f, const char* type, const std::vector<uint8_t>& data) {
  write32(f, static_cast<uint32_t>(data.size()));
  f.append(type, 4);
  f.append(reinterpret_cast<const char*>(data.data()), data.size());
  write32(f, crc32(data.data(), data.size(), crc32(reinterpret_cast<const uint8_t*>(type), 4)));
}

// zlib stream of stored (uncompressed) deflate blocks.
std::vector<uint8_t> zlib_stored(const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> z = {0x78, 0x01};
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(n & 0xff);
    z.push_back(n >> 8);
    z.push_back(~n & 0xff);
    z.push_back((~n >> 8) & 0xff);
    z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (const auto byte : raw) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  put32(z, (b << 16) | a);
  return z;
}

}  // namespace

void write_png_grid(const std::string& path, const at::Tensor& images) {
  if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3))
    throw InputError("--png needs images [B, 1 or 3, H, W]");
  // Same rounding as fastflow.utils.images.to_uint8: round((clamp(x) + 1) * 127.5).
  const auto u8 = ((images.to(at::kFloat).clamp(-1, 1) + 1) * 127.5).round().to(at::kByte)
                      .permute({0, 2, 3, 1}).contiguous().cpu();
  const int64_t b = u8.size(0), h = u8.size(1), w = u8.size(2), c = u8.size(3), pad = 1;
  const int64_t per_row = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(b))));
  const int64_t rows = (b + per_row - 1) / per_row;
  const int64_t gh = rows * (h + pad) + pad, gw = per_row * (w + pad) + pad;
  std::vector<uint8_t> grid(static_cast<std::size_t>(gh * gw * c), 255);
  const uint8_t* src = u8.data_ptr<uint8_t>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = i / per_row, q = i % per_row;
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t* line = src + ((i * h + y) * w) * c;
      uint8_t* dst = grid.data() + ((pad + r * (h + pad) + y) * gw + pad + q * (w + pad)) * c;
      std::copy(line, line + w * c, dst);
    }
  }
  // Enlarged like fastflow.utils.images.save_samples: nearest, by max(1, 64 / W).
  const int64_t s = std::max<int64_t>(1, 64 / w), sw = gw * s;
  std::vector<uint8_t> raw;
  raw.reserve(static_cast<std::size_t>(gh * s * (sw * c + 1)));
  for (int64_t y = 0; y < gh * s; ++y) {
    raw.push_back(0);  // filter: none
    const uint8_t* line = grid.data() + (y / s) * gw * c;
    for (int64_t x = 0; x < sw; ++x) raw.insert(raw.end(), line + (x / s) * c, line + (x / s + 1) * c);
  }
  std::vector<uint8_t> ihdr;
  put32(ihdr, static_cast<uint32_t>(sw));
  put32(ihdr, static_cast<uint32_t>(gh * s));
  ihdr.insert(ihdr.end(), {8, static_cast<uint8_t>(c == 1 ? 0 : 2), 0, 0, 0});
  std::string f("\x89PNG\r\n\x1a\n", 8);
  chunk(f, "IHDR", ihdr);
  chunk(f, "IDAT", zlib_stored(raw));
  chunk(f, "IEND", {});
  write_atomic(path, f);
}

}  // namespace fastflow
