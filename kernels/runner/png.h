// A batch of images in [-1, 1] as one PNG grid (the layout of fastflow.utils.images.save_grid).
#pragma once

#include <ATen/Tensor.h>

#include <string>

namespace fastflow {

// images: [B, C, H, W] with C = 1 (gray) or 3 (RGB); written uncompressed (stored deflate blocks).
void write_png_grid(const std::string& path, const at::Tensor& images);

}  // namespace fastflow
