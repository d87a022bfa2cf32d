// NumPy .npy files (format 1.0-3.0, C order, little endian) to and from CPU tensors.
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace fastflow {

// float16/32/64 and int32/64 arrays; throws InputError on a missing, malformed or truncated file.
at::Tensor read_npy(const std::string& path);

// Writes a float32 or int64 tensor (made contiguous on the CPU) as format 1.0.
void write_npy(const std::string& path, const at::Tensor& tensor);

}  // namespace fastflow
