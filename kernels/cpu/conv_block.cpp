// The fp32 kernel of fastflow_cpu::conv_block (conv_block.h has the formula; conv_block_op.cpp the op;
// block_common.h the layouts and the prologue).
//
// At batch 1 a small UNet is bound by per-op overhead and by GEMM libraries' poor use of tiny
// channel counts (8–64). This kernel vectorises over output *pixels* instead. A register tile of
// CB output channels × NV vectors of pixels is accumulated over Cin·taps products of one broadcast
// weight and one vector of inputs, read from one of three layouts of the prologue's activations:
//   bordered  the activation in a zero-bordered buffer with rows of W + 1 (one zero column between
//             rows is the right border of one and the left border of the next): tap (kh, kw) is
//             the buffer shifted by kh·(W + 1) + kw, so no column matrix is built; the pad column
//             computed per row is discarded on store (wide maps: W ≥ a vector, or odd);
//   im2col    small maps (2 ≤ W < a vector, W dividing it): the column matrix, one vector per tap
//             and pixel vector, shuffled out of the bordered rows in registers; no wasted lanes;
//   flat      1×1: the activation itself, rows packed.
#include "block_common.h"

namespace fastflow_cpu {
namespace {

// The fp32 tiles: one broadcast weight times a vector of pixels, accumulated from the bias and embedding.
struct F32 {
  using In = float;
  using W = float;
  using Acc = vec;
  struct Rows {
    const float* init;  // per output channel: bias + embedding
    Rows at(int64_t c0) const { return {init + c0}; }
  };
  static int64_t depth(const Geometry& g) { return g.cin; }
  static vec start(const Rows& r, int row) { return vec{} + r.init[row]; }
  static vec load(const float* p) { return fastflow_cpu::load(p); }
  static float broadcast(float w) { return w; }
  static void madd(vec& acc, vec a, float b) { acc += a * b; }
  static vec finish(const Rows&, int, vec acc) { return acc; }
};

}  // namespace

void run_conv_block(const ConvBlockArgs& p) {
  const Geometry g = geometry(p.cin, p.cout, p.h, p.w, p.taps);
  run_block(p, g, 0, [](float*, float*, bool) {},
            [&](const float* xp, float*, float* tmp, const float* init, int64_t c0, int64_t c1) {
              if (g.taps == 9) convolve<F32, 9>(g, xp, p.weight, F32::Rows{init}, tmp, c0, c1);
              else convolve<F32, 1>(g, xp, p.weight, F32::Rows{init}, tmp, c0, c1);
            });
}

}  // namespace fastflow_cpu
