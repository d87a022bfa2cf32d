#include "npy.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <utility>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "error.h"
#include "io.h"

namespace fastflow {
namespace {

// The header as the format defines it: a Python dict literal with exactly the keys 'descr' (a
// string), 'fortran_order' (True/False) and 'shape' (a tuple of non-negative ints), then spaces and a
// newline. What numpy would refuse (other or repeated keys, a shape that is not a tuple) is refused.
struct Header {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Header parse() {
    Header h;
    bool seen[3] = {false, false, false};
    expect('{');
    while (skip() != '}') {
      const std::string key = string_literal();
      expect(':');
      const int k = key == "descr" ? 0 : key == "fortran_order" ? 1 : key == "shape" ? 2 : -1;
      if (k < 0) fail("unknown key '" + key + "'");
      if (seen[k]) fail("repeated key '" + key + "'");
      seen[k] = true;
      if (k == 0) h.descr = string_literal();
      else if (k == 1) h.fortran = boolean();
      else h.shape = tuple();
      if (skip() != ',') break;
      ++i_;
    }
    expect('}');
    if (s_.find_first_not_of(" \n", i_) != std::string::npos) fail("text after the header dict");
    if (!(seen[0] && seen[1] && seen[2])) fail("needs the keys 'descr', 'fortran_order' and 'shape'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw InputError(path_ + ": malformed .npy header (" + why + ")"); }
  char skip() {
    while (i_ < s_.size() && s_[i_] == ' ') ++i_;
    return i_ < s_.size() ? s_[i_] : '\0';
  }
  void expect(char c) {
    if (skip() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string_literal() {
    const char q = skip();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const auto end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip();
    for (const auto& [word, value] : {std::pair<std::string, bool>{"True", true}, {"False", false}})
      if (s_.compare(i_, word.size(), word) == 0) {
        i_ += word.size();
        return value;
      }
    fail("fortran_order must be True or False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> dims;
    bool comma = true;
    while (skip() != ')') {
      if (!comma) fail("shape must be a tuple of integers");
      const auto start = i_;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
      if (i_ == start || i_ - start > 15) fail("shape must be a tuple of non-negative integers");
      dims.push_back(std::stoll(s_.substr(start, i_ - start)));
      comma = skip() == ',';
      if (comma) ++i_;
    }
    if (dims.size() == 1 && !comma) fail("a one-dimensional shape is written (n,)");
    ++i_;
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  std::size_t i_ = 0;
};

at::ScalarType dtype_of(const std::string& descr, const std::string& path) {
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
  const Header h = HeaderParser(header, path).parse();
  if (h.fortran) throw InputError(path + ": Fortran-order .npy arrays are not supported (save a C-contiguous array)");
  const auto dtype = dtype_of(h.descr, path);
  // The data must be exactly what the header describes, checked before allocating (a lying shape
  // must not ask for terabytes): bytes left in the file = elements × element size.
  const auto data_start = f.tellg();
  f.seekg(0, std::ios::end);
  const auto left = static_cast<uint64_t>(f.tellg() - data_start);
  f.seekg(data_start);
  uint64_t want = at::elementSize(dtype);
  for (const auto d : h.shape) {
    if (d != 0 && want > left / static_cast<uint64_t>(d) + 1) want = left + 1;  // already too large
    else want *= static_cast<uint64_t>(d);
  }
  if (want != left)
    throw InputError(path + ": .npy data is " + std::to_string(left) + " bytes, its header describes " +
                     (want > left ? "more" : std::to_string(want)));
  auto tensor = at::empty(h.shape, at::TensorOptions().dtype(dtype));
  if (left && !f.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(left)))
    throw InputError(path + ": unreadable .npy data");
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
  const uint16_t len = static_cast<uint16_t>(header.size());
  std::string bytes = "\x93NUMPY\x01";
  bytes += '\0';
  bytes += static_cast<char>(len & 0xff);
  bytes += static_cast<char>(len >> 8);
  bytes += header;
  bytes.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  write_atomic(path, bytes);
}

}  // namespace fastflow
