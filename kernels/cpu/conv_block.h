// fastflow_cpu::conv_block — a UNet block's convolution for the CPU with its prologue and epilogue
// fused (inference; fp32, NCHW):
//
//   a   = act(GroupNorm(x)·(1 + scale) + shift)        (norm optional; act = SiLU or identity)
//   a   = resample(a)                                  (none, nearest 2× up, 2×2 average down)
//   y   = (conv(a, W) + bias + add[:, :, None, None] + residual) · out_scale   (3×3 pad 1, or 1×1)
//
// conv_block.cpp is the kernel on raw pointers; conv_block_op.cpp the PyTorch op (argument checks,
// registration, the AOTInductor C shim). The reference is `fastflow.fused.cpu_block.conv_block_ref`.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace fastflow_cpu {

// One call's sizes and (contiguous, float32) buffers; optional inputs are null when absent.
struct ConvBlockArgs {
  int64_t n, cin, hin, win;  // input
  int64_t cout, h, w;        // output (after resampling)
  int taps;                  // 9 (3×3) or 1 (1×1)
  const float* x;            // [n, cin, hin, win]
  const float* weight;       // [cout, cin, taps]
  const float* bias;         // [cout]
  const float* norm_weight;  // [cin] with norm_bias, or null: no GroupNorm
  const float* norm_bias;
  const float* scale;        // [n, cin] (needs the GroupNorm)
  const float* shift;
  const float* add;          // [n, cout]
  const float* residual;     // [n, cout, h, w]
  int64_t groups;
  double eps;
  bool act;
  int64_t resample;          // 0 none, 1 nearest 2× up, -1 2×2 average down
  float out_scale;
  float* y;                  // [n, cout, h, w]
  // int8 (run_conv_block_q8): `weight` is unused; per-output-channel symmetric int8 weights packed by
  // four input channels, and their scales
  const int8_t* qweight = nullptr;  // [cout, ceil(cin / 4), taps, 4]
  const float* w_scale = nullptr;   // [cout]
};

// Runs the block (threads over samples, or over output channels of one large sample).
void run_conv_block(const ConvBlockArgs& args);

// The same block with int8 products: the prologue's activations of each sample are quantised to unsigned
// integers over their own range (asymmetric, zero exact; 0…int8_levels()), multiplied with the int8 weights
// into int32 sums, and dequantised in the epilogue (bias, embedding and residual in float).
void run_conv_block_q8(const ConvBlockArgs& args);

// The activations' top level: 255 where the CPU has VNNI dot products (AVX512-VNNI, AVX-VNNI); 127
// where it multiplies with `maddubs`, whose 16-bit pair sums would saturate at 255 · 127 · 2.
int64_t int8_levels();

}  // namespace fastflow_cpu

// The ops: check their arguments (TORCH_CHECK) and return y.
at::Tensor conv_block(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                      int64_t groups, double eps, bool act, int64_t resample,
                      const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual,
                      double out_scale);
at::Tensor conv_block_q8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                         const std::optional<at::Tensor>& norm_bias, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& shift, int64_t groups, double eps, bool act,
                         int64_t resample, const std::optional<at::Tensor>& add,
                         const std::optional<at::Tensor>& residual, double out_scale);
