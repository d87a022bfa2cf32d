#include "package_check.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "crc32.h"
#include "error.h"

namespace fastflow {
namespace {

uint64_t le(const std::string& b, std::size_t at, int bytes) {
  if (at + bytes > b.size()) throw InputError("zip structure reaches past its record");
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

std::string read_at(std::ifstream& f, uint64_t offset, uint64_t size, uint64_t file_size) {
  if (offset > file_size || size > file_size - offset) throw InputError("an entry lies past the end of the file");
  std::string out(size, '\0');
  f.seekg(static_cast<std::streamoff>(offset));
  if (!f.read(out.data(), static_cast<std::streamsize>(size))) throw InputError("cannot read an entry");
  return out;
}

void check_elf(const std::string& d, const std::string& name) {
  if (d.size() < 64 || d.compare(0, 4, "\x7f" "ELF") != 0 || d[4] != 2 || d[5] != 1)
    throw InputError(name + ": not a 64-bit little-endian ELF library (cut or foreign)");
  const uint64_t phoff = le(d, 32, 8), shoff = le(d, 40, 8);
  const uint64_t phentsize = le(d, 54, 2), phnum = le(d, 56, 2), shentsize = le(d, 58, 2), shnum = le(d, 60, 2);
  if (phentsize != 56 || phoff + phnum * phentsize > d.size() || shoff + shnum * shentsize > d.size())
    throw InputError(name + ": library cut short (" + std::to_string(d.size()) + " bytes; its header tables reach past the end)");
  for (uint64_t i = 0; i < phnum; ++i) {
    const std::size_t at = phoff + i * phentsize;
    if (le(d, at, 4) == 1 && le(d, at + 8, 8) + le(d, at + 32, 8) > d.size())  // PT_LOAD: p_offset + p_filesz
      throw InputError(name + ": library cut short (" + std::to_string(d.size()) + " bytes; a segment reaches past the end)");
  }
}

// (central directory offset, entry count) from the end-of-central-directory record (zip64 too).
std::pair<uint64_t, uint64_t> central_directory(std::ifstream& f, uint64_t size) {
  const uint64_t tail_len = std::min<uint64_t>(size, 65557);
  const std::string tail = read_at(f, size - tail_len, tail_len, size);
  const auto eocd = tail.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos) throw InputError("no zip end record");
  uint64_t offset = le(tail, eocd + 16, 4), count = le(tail, eocd + 10, 2);
  if ((offset == 0xFFFFFFFFu || count == 0xFFFF) && eocd >= 20 && tail.compare(eocd - 20, 4, std::string("PK\x06\x07", 4)) == 0) {
    const std::string rec = read_at(f, le(tail, eocd - 20 + 8, 8), 56, size);
    if (rec.compare(0, 4, std::string("PK\x06\x06", 4)) != 0) throw InputError("bad zip64 end record");
    count = le(rec, 32, 8);
    offset = le(rec, 48, 8);
  }
  return {offset, count};
}

}  // namespace

void check_package(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw InputError(path + ": cannot open");
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  try {
    auto [at, count] = central_directory(f, size);
    if (count > 1000000) throw InputError("too many entries");
    for (uint64_t e = 0; e < count; ++e) {
      const std::string hdr = read_at(f, at, 46, size);
      if (hdr.compare(0, 4, std::string("PK\x01\x02", 4)) != 0) throw InputError("bad central directory entry");
      const uint64_t method = le(hdr, 10, 2), crc = le(hdr, 16, 4);
      uint64_t csize = le(hdr, 20, 4), usize = le(hdr, 24, 4), local = le(hdr, 42, 4);
      const uint64_t name_len = le(hdr, 28, 2), extra_len = le(hdr, 30, 2), comment_len = le(hdr, 32, 2);
      const std::string name = read_at(f, at + 46, name_len, size);
      const std::string extra = read_at(f, at + 46 + name_len, extra_len, size);
      for (std::size_t x = 0; x + 4 <= extra.size();) {  // zip64 extended information
        const uint64_t id = le(extra, x, 2), len = le(extra, x + 2, 2);
        std::size_t y = x + 4;
        if (id == 1) {
          if (usize == 0xFFFFFFFFu) usize = le(extra, y, 8), y += 8;
          if (csize == 0xFFFFFFFFu) csize = le(extra, y, 8), y += 8;
          if (local == 0xFFFFFFFFu) local = le(extra, y, 8);
        }
        x += 4 + len;
      }
      at += 46 + name_len + extra_len + comment_len;
      const std::string lh = read_at(f, local, 30, size);
      if (lh.compare(0, 4, std::string("PK\x03\x04", 4)) != 0) throw InputError("bad local header of " + name);
      const uint64_t start = local + 30 + le(lh, 26, 2) + le(lh, 28, 2);
      if (method != 0) {  // compressed entries: inside the file (their CRC is the extractor's to check)
        read_at(f, start, 0, size);
        if (csize > size - start) throw InputError(name + " lies past the end of the file");
        if (name.size() > 3 && name.compare(name.size() - 3, 3, ".so") == 0) throw InputError(name + " is compressed");
        continue;
      }
      if (csize != usize) throw InputError(name + ": stored entry with two sizes");
      const std::string data = read_at(f, start, csize, size);
      if (crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size()) != crc) throw InputError("entry " + name + " fails its CRC-32 (corrupted package); re-export it");
      if (name.size() > 3 && name.compare(name.size() - 3, 3, ".so") == 0) check_elf(data, name);
    }
  } catch (const InputError& e) {
    throw InputError(path + ": not a whole .pt2 package (" + e.what() + ")");
  }
}

}  // namespace fastflow
