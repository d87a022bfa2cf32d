// The CPU block kernels' shared part (conv_block.cpp: fp32 tiles; conv_block_q8.cpp: int8 tiles): vector
// types, the geometry of the tiles' input layouts, and the prologue that normalises, activates and resamples
// one sample's input into them, and the store of the epilogue. Internal to kernels/cpu.
#pragma once

#include "conv_block.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace fastflow_cpu {
namespace {


#if defined(__AVX512F__)
constexpr int VL = 16;  // floats per vector register
constexpr int CB = 8;   // output channels per register tile (CB·NV ≤ 24 of 32 registers); also CB/2, 1
#else
constexpr int VL = 8;
constexpr int CB = 4;   // 16 registers
#endif
constexpr int NV_MAX = 3;  // pixel vectors per register tile
typedef float vec __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(VL * sizeof(int32_t))));

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

enum class Layout { Bordered, Im2col, Flat };

struct Geometry {
  int64_t cin, cout, h, w;  // the convolution's input (after resampling) and output size
  Layout layout;
  int64_t wp;               // row pitch W + 1 of a bordered plane
  int64_t bplane;           // floats of a bordered plane (with a margin for whole-vector reads)
  int64_t pitch;            // row pitch of the tiles' output: W + 1 (bordered) or W
  int64_t padded;           // tile output floats per channel: H·pitch rounded up to vectors
  int64_t plane;            // floats per input channel in the buffer the tiles read
  int taps;                 // 9 (3×3) or 1 (1×1: the centre tap)
  int off[9];               // tap offsets in that buffer
};

Geometry geometry(int64_t cin, int64_t cout, int64_t h, int64_t w, int taps) {
  Geometry g{cin, cout, h, w, Layout::Bordered, w + 1, 0, w + 1, 0, 0, taps, {}};
  g.bplane = (h + 2) * g.wp + 2 * VL;  // a tile (or shuffle) reads up to 2·VL past a row start
  if (taps == 1) g.layout = Layout::Flat;
  else if (w >= 2 && w < VL && VL % w == 0) g.layout = Layout::Im2col;
  if (g.layout == Layout::Bordered) {
    g.padded = (h * g.wp + VL - 1) / VL * VL;
    g.plane = g.bplane;
    for (int k = 0; k < 9; ++k) g.off[k] = static_cast<int>((k / 3) * g.wp + k % 3);
  } else {
    g.pitch = w;
    g.padded = (h * w + VL - 1) / VL * VL;
    g.plane = taps * g.padded;
    for (int k = 0; k < taps; ++k) g.off[k] = static_cast<int>(k * g.padded);
  }
  return g;
}

// One register tile of kernel K (conv_block.cpp: fp32; conv_block_q8.cpp: int8):
//   out[r][p] = K::finish(Σ_{ci,k} w[r][ci·TAPS + k] · xp[ci][p + off[k]]), ci over K::depth(g) planes.
// Rows past `rows` (the last block of channels) repeat the last row and are not stored: no branch in the
// loop. Not inlined: inside a larger function the compiler spills the RB·NV accumulators.
template <class K, int TAPS, int RB, int NV>
__attribute__((noinline)) void tile(const Geometry& g, const typename K::In* xp, const typename K::W* w,
                                    int64_t wstride, const typename K::Rows& rows_of, int rows, float* out) {
  const typename K::W* wr[RB];
  typename K::Acc acc[RB][NV];
  for (int r = 0; r < RB; ++r) {
    const int row = std::min(r, rows - 1);
    wr[r] = w + row * wstride;
    for (int j = 0; j < NV; ++j) acc[r][j] = K::start(rows_of, row);
  }
  int off[TAPS];
  for (int k = 0; k < TAPS; ++k) off[k] = g.off[k];
  const int64_t depth = K::depth(g);
  for (int64_t ci = 0; ci < depth; ++ci, xp += g.plane) {
    for (int k = 0; k < TAPS; ++k) {
      typename K::Acc a[NV];
      for (int j = 0; j < NV; ++j) a[j] = K::load(xp + off[k] + j * VL);
      for (int r = 0; r < RB; ++r) {
        const auto b = K::broadcast(wr[r][k]);
        for (int j = 0; j < NV; ++j) K::madd(acc[r][j], a[j], b);
      }
    }
    for (int r = 0; r < RB; ++r) wr[r] += TAPS;
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < NV; ++j) store(out + r * g.padded + j * VL, K::finish(rows_of, r, acc[r][j]));
}

template <class K, int TAPS, int RB>
void tiles(int64_t nv, const Geometry& g, const typename K::In* xp, const typename K::W* w, int64_t wstride,
           const typename K::Rows& rows_of, int rows, float* out) {
  if (nv == 3) tile<K, TAPS, RB, 3>(g, xp, w, wstride, rows_of, rows, out);
  else if (nv == 2) tile<K, TAPS, RB, 2>(g, xp, w, wstride, rows_of, rows, out);
  else tile<K, TAPS, RB, 1>(g, xp, w, wstride, rows_of, rows, out);
}

// Output channels [c_begin, c_end) (a multiple of CB apart, but for the last) of one sample into
// `tmp` ([cout][padded]). The pixel vectors split evenly into tiles of at most NV_MAX (4 → 2 + 2);
// a map of one vector takes 2·CB channels per tile, enough accumulators to hide the FMA latency.
template <class K, int TAPS>
void convolve(const Geometry& g, const typename K::In* xp, const typename K::W* weight, const typename K::Rows& rows_of,
              float* tmp, int64_t c_begin, int64_t c_end) {
  const int64_t k = K::depth(g) * TAPS, nvec = g.padded / VL, ptiles = (nvec + NV_MAX - 1) / NV_MAX;
  const int64_t cb = nvec == 1 ? 2 * CB : CB;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += cb) {
    const int rows = static_cast<int>(std::min<int64_t>(cb, c_end - c0));
    const typename K::W* w = weight + c0 * k;
    const typename K::Rows at = rows_of.at(c0);
    for (int64_t t = 0, v0 = 0; t < ptiles; ++t) {
      const int64_t nv = (nvec - v0) / (ptiles - t);
      const typename K::In* x = xp + v0 * VL;
      float* out = tmp + c0 * g.padded + v0 * VL;
      v0 += nv;
      if (rows == 1) tiles<K, TAPS, 1>(nv, g, x, w, k, at, rows, out);  // e.g. a 1-channel output
      else if (rows <= CB / 2) tiles<K, TAPS, CB / 2>(nv, g, x, w, k, at, rows, out);
      else if (rows <= CB) tiles<K, TAPS, CB>(nv, g, x, w, k, at, rows, out);
      else tile<K, TAPS, 2 * CB, 1>(g, x, w, k, at, rows, out);
    }
  }
}

// exp for a vector (Cephes' polynomial on [−ln2/2, ln2/2] after x = n·ln2 + r; rel. error ~2e−7).
inline vec vexp(vec x) {
  x = x < 88.f ? x : 88.f;
  x = x > -87.f ? x : -87.f;
  vec y = x * 1.44269504f;
  const ivec n = __builtin_convertvector(y + (y >= 0.f ? 0.5f : -0.5f), ivec);
  const vec fn = __builtin_convertvector(n, vec);
  const vec r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  vec p = vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const ivec bits = (n + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// 1/d for d ≥ 1: the hardware estimate and one Newton step (rel. error < 1e−7; a division costs
// several times more and bounded the SiLU prologue).
inline vec reciprocal(vec d) {
#if defined(__AVX512F__)
  const vec r = (vec)_mm512_rcp14_ps((__m512)d);
#else
  const vec r = (vec)_mm256_rcp_ps((__m256)d);
#endif
  return r * (2.f - d * r);
}

inline vec silu(vec u) { return u * reciprocal(1.f + vexp(-u)); }

// dst[i] = act(a·src[i] + b) over n contiguous values (four vectors at a time: SiLU is one long
// chain of dependent operations per vector).
inline __attribute__((always_inline)) void affine_act(const float* src, float a, float b, bool act, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL) {
    vec u[4];
    for (int j = 0; j < 4; ++j) u[j] = load(src + i + j * VL) * a + b;
    if (act)
      for (int j = 0; j < 4; ++j) u[j] = silu(u[j]);
    for (int j = 0; j < 4; ++j) store(dst + i + j * VL, u[j]);
  }
  for (; i + VL <= n; i += VL) {
    const vec u = load(src + i) * a + b;
    store(dst + i, act ? silu(u) : u);
  }
  for (; i < n; ++i) {
    const float u = a * src[i] + b;
    dst[i] = act ? u / (1.f + std::exp(-u)) : u;
  }
}

// act(a[c]·x + b[c]) of input channels [c0, c1) of one sample into `out` (same layout); one loop, so
// that the SiLU constants stay in registers across channels.
void activate(const ConvBlockArgs& p, const float* x, const float* a, const float* b, float* out, int64_t c0,
              int64_t c1) {
  const int64_t hw = p.hin * p.win;
  for (int64_t c = c0; c < c1; ++c) affine_act(x + c * hw, a[c], b[c], p.act, hw, out + c * hw);
}

// Σ src[i] and Σ (src[i] − mean)² over n contiguous values (partial sums in four vectors: no
// chain of dependent additions).
double sum(const float* src, int64_t n, float mean = 0.f, bool squares = false) {
  vec acc[4] = {};
  int64_t i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL)
    for (int j = 0; j < 4; ++j) {
      const vec d = load(src + i + j * VL) - mean;
      acc[j] += squares ? d * d : d;
    }
  for (; i + VL <= n; i += VL) {
    const vec d = load(src + i) - mean;
    acc[0] += squares ? d * d : d;
  }
  const vec all = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float lanes = 0.f;
  for (int j = 0; j < VL; ++j) lanes += all[j];
  double total = lanes;
  for (; i < n; ++i) total += squares ? (src[i] - mean) * (src[i] - mean) : src[i] - mean;
  return total;
}

// Per-channel affine (a, b) of the normalisation for sample `n` (its groups [g0, g1)): value = a·x + b.
void affine(const ConvBlockArgs& p, const float* x, int64_t n, float* a, float* b, int64_t g0, int64_t g1) {
  const int64_t c = p.cin, hw = p.hin * p.win;
  if (!p.norm_weight) {
    std::fill(a, a + c, 1.f);
    std::fill(b, b + c, 0.f);
    return;
  }
  const int64_t cg = c / p.groups, count = cg * hw;
  for (int64_t grp = g0; grp < g1; ++grp) {
    const float* xg = x + grp * count;
    const double mean = sum(xg, count) / count;
    const double rstd = 1.0 / std::sqrt(sum(xg, count, static_cast<float>(mean), true) / count + p.eps);
    for (int64_t ch = grp * cg; ch < (grp + 1) * cg; ++ch) {
      const double s = p.scale ? 1.0 + p.scale[n * c + ch] : 1.0;
      const double t = p.shift ? p.shift[n * c + ch] : 0.0;
      a[ch] = static_cast<float>(rstd * p.norm_weight[ch] * s);
      b[ch] = static_cast<float>((p.norm_bias[ch] - mean * rstd * p.norm_weight[ch]) * s + t);
    }
  }
}

// One activated input channel `src`, resampled to the output size, into `dst` with row pitch `pitch`.
void place(const ConvBlockArgs& p, const Geometry& g, const float* src, float* dst, int64_t pitch) {
  const int64_t win = p.win;
  for (int64_t i = 0; i < g.h; ++i) {
    float* d = dst + i * pitch;
    if (p.resample == 0) {  // rows of a few vectors: no call to memcpy
      const float* s = src + i * win;
      int64_t j = 0;
      for (; j + VL <= win; j += VL) store(d + j, load(s + j));
      for (; j < win; ++j) d[j] = s[j];
    } else if (p.resample == 1) {
      const float* s = src + (i / 2) * win;
      for (int64_t j = 0; j < g.w; ++j) d[j] = s[j / 2];
    } else {
      const float *s0 = src + 2 * i * win, *s1 = s0 + win;
      for (int64_t j = 0; j < g.w; ++j) d[j] = 0.25f * (s0[2 * j] + s0[2 * j + 1] + s1[2 * j] + s1[2 * j + 1]);
    }
  }
}

// The shuffle indices of im2col: lane l of tap column kw reads lane (l / W)·(W + 1) + l % W + kw
// of the two vectors from a bordered row.
struct Im2colIndex {
  ivec idx[3];
  explicit Im2colIndex(const Geometry& g) {
    for (int kw = 0; kw < 3; ++kw)
      for (int l = 0, r = 0, j = 0; l < VL; ++l) {
        idx[kw][l] = static_cast<int32_t>(r * g.wp + j + kw);
        if (++j == g.w) j = 0, ++r;
      }
  }
};

// The 9 tap vectors of every pixel vector of one bordered plane `bp` into `col` (im2col layout).
// A vector holds VL / W whole rows r0…; tap (kh, kw) reads bordered rows r0 + kh… at columns
// j + kw, i.e. lanes of two consecutive vectors from row r0 + kh: one two-source shuffle.
void im2col(const Geometry& g, const Im2colIndex& index, const float* bp, float* col) {
  const ivec* idx = index.idx;
  const int64_t rows = VL / g.w;
  for (int64_t p0 = 0, r0 = 0; p0 < g.padded; p0 += VL, r0 += rows)
    for (int kh = 0; kh < 3; ++kh) {
      const vec lo = load(bp + (r0 + kh) * g.wp), hi = load(bp + (r0 + kh) * g.wp + VL);
      for (int kw = 0; kw < 3; ++kw) store(col + (kh * 3 + kw) * g.padded + p0, __builtin_shuffle(lo, hi, idx[kw]));
    }
}

// The activations of input channels [c0, c1) of one sample in the tiles' layout (`xp`; zeroed where
// the layout has borders or padding; `act`: scratch for the activated sample; `bp`: one zeroed
// bordered plane for im2col). Without resampling, flat and bordered layouts are written directly.
void fill(const ConvBlockArgs& p, const Geometry& g, const float* x, const float* a, const float* b, float* act,
          float* bp, float* xp, int64_t c0, int64_t c1) {
  const int64_t hw = p.hin * p.win;
  if (g.layout == Layout::Flat && p.resample == 0 && g.plane == hw) return activate(p, x, a, b, xp, c0, c1);
  if (g.layout == Layout::Bordered && p.resample == 0) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = 0; i < g.h; ++i)
        affine_act(x + c * hw + i * p.win, a[c], b[c], p.act, p.win, xp + c * g.plane + (i + 1) * g.wp + 1);
    return;
  }
  activate(p, x, a, b, act, c0, c1);
  if (g.layout != Layout::Im2col) {
    const bool flat = g.layout == Layout::Flat;
    for (int64_t c = c0; c < c1; ++c)
      place(p, g, act + c * hw, xp + c * g.plane + (flat ? 0 : g.wp + 1), flat ? g.w : g.wp);
    return;
  }
  const Im2colIndex index(g);
  for (int64_t c = c0; c < c1; ++c) {
    place(p, g, act + c * hw, bp + g.wp + 1, g.wp);
    im2col(g, index, bp, xp + c * g.plane);
  }
}

// y = (tile + residual) · out_scale for one output channel, dropping the pad columns of the
// bordered layout.
void store_channel(const Geometry& g, const float* tile, const float* residual, float out_scale, float* y) {
  const bool packed = g.pitch == g.w;
  const int64_t rows = packed ? 1 : g.h, n = packed ? g.h * g.w : g.w;
  for (int64_t i = 0; i < rows; ++i) {
    const float* t = tile + i * g.pitch;
    const float* r = residual ? residual + i * n : nullptr;
    float* d = y + i * n;
    int64_t j = 0;
    for (; j + VL <= n; j += VL) store(d + j, (load(t + j) + (r ? load(r + j) : vec{})) * out_scale);
    for (; j < n; ++j) d[j] = (t[j] + (r ? r[j] : 0.f)) * out_scale;
  }
}

// This thread's scratch of at least `need` floats, reused across calls.
float* scratch(int64_t need) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < need) buffer.resize(need);
  return buffer.data();
}

// The driver both kernels share. Per sample: the prologue into `xp` (float, the tiles' layout), the tile
// init (bias + embedding), then `prepared(xp, extra, split)` once (the int8 kernel quantises there, into its
// `extra` floats of scratch) and `convolve(xp, extra, tmp, init, c0, c1)` for output channels [c0, c1)
// into `tmp` ([cout][padded]), then the store (residual, out_scale). Threads split the samples, or the
// output channels of one sample of enough work (~30 µs on one core; below that a fork-join costs more than
// it saves: the digits student's largest convolution is 1.2 MFLOP).
template <class Prepared, class Convolve>
void run_block(const ConvBlockArgs& p, const Geometry& g, int64_t extra, Prepared prepared, Convolve convolve) {
  const int64_t in_size = p.cin * p.hin * p.win, out_size = p.cout * p.h * p.w;
  // Scratch per sample: the tiles' input, their output, the affine (a, b), the tile init, the
  // activated input, one bordered plane, the kernel's own.
  const int64_t xp_size = g.cin * g.plane, tmp_size = g.cout * g.padded;
  const int64_t need = xp_size + tmp_size + 2 * p.cin + p.cout + in_size + g.bplane + extra;
  // The prologue of sample s; `split`: threads share its groups and channels (not im2col's: one bordered
  // plane of scratch)
  auto prepare = [&](int64_t s, float* xp, bool split) {
    float *a = xp + xp_size + tmp_size, *b = a + p.cin, *init = b + p.cin, *act = init + p.cout;
    float* bp = act + in_size;
    const float* x = p.x + s * in_size;
    const bool zero = g.layout == Layout::Bordered || g.padded != p.h * p.w;
    if (g.layout == Layout::Im2col) std::fill(bp, bp + g.bplane, 0.f);  // every vector of xp is written
    split = split && g.layout != Layout::Im2col;
    at::parallel_for(0, p.norm_weight ? p.groups : 1, split ? 1 : p.groups + 1, [&](int64_t g0, int64_t g1) {
      affine(p, x, s, a, b, g0, g1);
    });
    at::parallel_for(0, p.cin, split ? 1 : p.cin + 1, [&](int64_t c0, int64_t c1) {
      if (zero && g.layout != Layout::Im2col) std::fill(xp + c0 * g.plane, xp + c1 * g.plane, 0.f);
      fill(p, g, x, a, b, act, bp, xp, c0, c1);
    });
    for (int64_t c = 0; c < p.cout; ++c) init[c] = (p.bias ? p.bias[c] : 0.f) + (p.add ? p.add[s * p.cout + c] : 0.f);
    prepared(xp, bp + g.bplane, split);
  };
  auto finish = [&](int64_t s, float* xp, int64_t c0, int64_t c1) {  // channels [c0, c1) of sample s
    float *tmp = xp + xp_size, *init = tmp + tmp_size + 2 * p.cin, *own = init + p.cout + in_size + g.bplane;
    convolve(static_cast<const float*>(xp), own, tmp, static_cast<const float*>(init), c0, c1);
    for (int64_t c = c0; c < c1; ++c)
      store_channel(g, tmp + c * g.padded, p.residual ? p.residual + s * out_size + c * p.h * p.w : nullptr,
                    p.out_scale, p.y + s * out_size + c * p.h * p.w);
  };
  const double flops = 2.0 * p.cout * p.cin * p.taps * p.h * p.w;
  if (p.n == 1 && at::get_num_threads() > 1 && flops >= 2e6) {
    float* xp = scratch(need);
    prepare(0, xp, true);
    at::parallel_for(0, (p.cout + CB - 1) / CB, 1, [&](int64_t b0, int64_t b1) {
      finish(0, xp, b0 * CB, std::min(b1 * CB, p.cout));
    });
  } else {
    at::parallel_for(0, p.n, 1, [&](int64_t begin, int64_t end) {
      float* xp = scratch(need);
      for (int64_t s = begin; s < end; ++s) {
        prepare(s, xp, false);
        finish(s, xp, 0, p.cout);
      }
    });
  }
}

}  // namespace
}  // namespace fastflow_cpu
