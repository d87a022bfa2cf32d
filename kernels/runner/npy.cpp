#include "npy.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "error.h"

namespace fastflow {
namespace {

// The value of 'key' in the header dict, e.g. "'<f4'" or "(2, 1, 16, 16)" or "False".
std::string dict_value(const std::string& header, const std::string& key, const std::string& path) {
  const auto k = header.find("'" + key + "'");
  if (k == std::string::npos) throw InputError(path + ": .npy header has no '" + key + "'");
  auto v = header.find(':', k);
  if (v == std::string::npos) throw InputError(path + ": malformed .npy header");
  ++v;
  while (v < header.size() && header[v] == ' ') ++v;
  std::size_t end = v;
  if (header[v] == '(') {
    end = header.find(')', v);
    if (end == std::string::npos) throw InputError(path + ": malformed .npy shape");
    ++end;
  } else {
    end = header.find_first_of(",}", v);
  }
  return header.substr(v, end - v);
}

at::ScalarType dtype_of(std::string descr, const std::string& path) {
  descr.erase(std::remove(descr.begin(), descr.end(), '\''), descr.end());
  if (descr == "<f4") return at::kFloat;
  if (descr == "<f8") return at::kDouble;
  if (descr == "<f2") return at::kHalf;
  if (descr == "<i8") return at::kLong;
  if (descr == "<i4") return at::kInt;
  throw InputError(path + ": unsupported .npy dtype " + descr + " (float16/32/64, int32/64 little endian)");
}

}  // namespace

at::Tensor read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path + ": cannot open");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw InputError(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw InputError(path + ": truncated .npy header");
    header_len = b[0] | (b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw InputError(path + ": truncated .npy header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  } else {
    throw InputError(path + ": unsupported .npy version " + std::to_string(int(magic[6])));
  }
  if (header_len > (1u << 20)) throw InputError(path + ": implausible .npy header length");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) throw InputError(path + ": truncated .npy header");
  if (dict_value(header, "fortran_order", path).rfind("False", 0) != 0)
    throw InputError(path + ": Fortran-order .npy arrays are not supported (save a C-contiguous array)");
  const auto dtype = dtype_of(dict_value(header, "descr", path), path);
  std::vector<int64_t> shape;
  std::string dims = dict_value(header, "shape", path);
  std::stringstream ss(dims.substr(1, dims.size() - 2));
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    try {
      shape.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw InputError(path + ": malformed .npy shape " + dims);
    }
    if (shape.back() < 0) throw InputError(path + ": negative .npy dimension");
  }
  auto tensor = at::empty(shape, at::TensorOptions().dtype(dtype));
  const auto nbytes = static_cast<std::streamsize>(tensor.nbytes());
  if (nbytes && !f.read(static_cast<char*>(tensor.data_ptr()), nbytes))
    throw InputError(path + ": truncated .npy data (expected " + std::to_string(nbytes) + " bytes)");
  return tensor;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  const auto t = tensor.cpu().contiguous();
  std::string descr;
  if (t.scalar_type() == at::kFloat) descr = "<f4";
  else if (t.scalar_type() == at::kLong) descr = "<i8";
  else throw std::logic_error("write_npy: float32 or int64 only");
  std::string shape = "(";
  for (const auto d : t.sizes()) shape += std::to_string(d) + ", ";
  if (t.dim() > 1) shape.resize(shape.size() - 2);
  else if (t.dim() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw InputError(path + ": cannot write");
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char lenb[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(lenb, 2);
  f << header;
  f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!f) throw InputError(path + ": write failed");
}

}  // namespace fastflow
