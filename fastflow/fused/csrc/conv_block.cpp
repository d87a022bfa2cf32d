// fastflow_cpu::conv_block — a UNet block's 3×3 convolution for the CPU with its prologue and
// epilogue fused (inference; fp32, NCHW):
//
//   a   = act(GroupNorm(x)·(1 + scale) + shift)        (norm optional; act = SiLU or identity)
//   a   = resample(a)                                  (none, nearest 2× up, 2×2 average down)
//   y   = (conv(a, W) + bias + add[:, :, None, None] + residual) · out_scale   (3×3 pad 1, or 1×1)
//
// At batch 1 a small UNet is bound by per-op overhead and by GEMM libraries' poor use of tiny
// channel counts (8–64). This kernel vectorises over output *pixels* instead: the activation is
// written once into a zero-bordered buffer with rows of W + 2, on which every tap (kh, kw) of the
// 3×3 stencil is the same buffer shifted by kh·(W + 2) + kw — a GEMM whose B operand is never
// materialised (no im2col). A register tile of CB output channels × NV vectors of pixels is
// accumulated over Cin·9 taps with one broadcast weight per channel and tap; the two pad columns
// computed per row are discarded when the tile is stored.
//
// Registered as the PyTorch op `fastflow_cpu::conv_block` (CPU) and exported with a C shim,
// `aoti_torch_cpu_conv_block`, so that AOTInductor packages call it directly (no proxy executor).
// The reference is `fastflow.fused.cpu_block.conv_block_ref`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/EmptyTensor.h>
#include <torch/library.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

struct Geometry {
  int64_t cin, cout, h, w;      // the convolution's input (after resampling) and output size
  int64_t wp, pixels, padded;   // row pitch W + 2, H·(W + 2), that rounded up to vectors
  int64_t plane;                // floats per channel in the bordered buffer
  int taps;                     // 9 (3×3) or 1 (1×1: the centre tap)
  int off[9];                   // tap offsets in the bordered buffer
};

Geometry geometry(int64_t cin, int64_t cout, int64_t h, int64_t w, int taps) {
  Geometry g{cin, cout, h, w, w + 2, h * (w + 2), 0, 0, taps, {}};
  g.padded = (g.pixels + VL - 1) / VL * VL;
  g.plane = (h + 2) * g.wp + 2 * VL;  // the last tile reads up to VL − 1 + 2·wp + 2 past its start
  for (int k = 0; k < 9; ++k) g.off[k] = static_cast<int>((k / 3) * g.wp + k % 3);
  if (taps == 1) g.off[0] = static_cast<int>(g.wp + 1);
  return g;
}

// One register tile: out[r][p] = init[r] + Σ_{ci,k} w[r][ci·TAPS + k] · xp[ci][p + off[k]].
// Rows past `rows` (the last block of channels) repeat the last row and are not stored: no branch
// in the loop. Not inlined: inside a larger function the compiler spills the CB·NV accumulators.
template <int TAPS, int RB, int NV>
__attribute__((noinline)) void tile(const Geometry& g, const float* xp, const float* w, int64_t wstride,
                                    const float* init, int rows, float* out) {
  const float* wr[RB];
  vec acc[RB][NV];
  for (int r = 0; r < RB; ++r) {
    const int row = std::min(r, rows - 1);
    wr[r] = w + row * wstride;
    for (int j = 0; j < NV; ++j) acc[r][j] = vec{} + init[row];
  }
  int off[TAPS];
  for (int k = 0; k < TAPS; ++k) off[k] = g.off[k];
  for (int64_t ci = 0; ci < g.cin; ++ci, xp += g.plane) {
    for (int k = 0; k < TAPS; ++k) {
      vec a[NV];
      for (int j = 0; j < NV; ++j) a[j] = load(xp + off[k] + j * VL);
      for (int r = 0; r < RB; ++r) {
        const float b = wr[r][k];
        for (int j = 0; j < NV; ++j) acc[r][j] += a[j] * b;
      }
    }
    for (int r = 0; r < RB; ++r) wr[r] += TAPS;
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < NV; ++j) store(out + r * g.padded + j * VL, acc[r][j]);
}

template <int TAPS, int RB>
void tiles(int64_t nv, const Geometry& g, const float* xp, const float* w, int64_t wstride, const float* init,
           int rows, float* out) {
  if (nv == 3) tile<TAPS, RB, 3>(g, xp, w, wstride, init, rows, out);
  else if (nv == 2) tile<TAPS, RB, 2>(g, xp, w, wstride, init, rows, out);
  else tile<TAPS, RB, 1>(g, xp, w, wstride, init, rows, out);
}

template <int TAPS>
void convolve_taps(const Geometry& g, const float* xp, const float* weight, const float* init, float* tmp,
                   int64_t c_begin, int64_t c_end) {
  const int64_t k = g.cin * TAPS;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += CB) {
    const int rows = static_cast<int>(std::min<int64_t>(CB, c_end - c0));
    for (int64_t p0 = 0; p0 < g.padded; p0 += NV_MAX * VL) {
      const int64_t nv = std::min<int64_t>(NV_MAX, (g.padded - p0) / VL);
      const float* w = weight + c0 * k;
      float* out = tmp + c0 * g.padded + p0;
      if (rows == 1) tiles<TAPS, 1>(nv, g, xp + p0, w, k, init + c0, rows, out);  // e.g. a 1-channel output
      else if (rows <= CB / 2) tiles<TAPS, CB / 2>(nv, g, xp + p0, w, k, init + c0, rows, out);
      else tiles<TAPS, CB>(nv, g, xp + p0, w, k, init + c0, rows, out);
    }
  }
}

// Output channels [c_begin, c_end) (a multiple of CB apart, but for the last) of one sample's
// bordered buffer into `tmp` ([cout][padded]).
void convolve(const Geometry& g, const float* xp, const float* weight, const float* init, float* tmp,
              int64_t c_begin, int64_t c_end) {
  if (g.taps == 9) convolve_taps<9>(g, xp, weight, init, tmp, c_begin, c_end);
  else convolve_taps<1>(g, xp, weight, init, tmp, c_begin, c_end);
}

// exp for a vector (Cephes' polynomial on [−ln2/2, ln2/2] after x = n·ln2 + r; rel. error ~2e−7).
inline vec vexp(vec x) {
  typedef int32_t ivec __attribute__((vector_size(VL * sizeof(int32_t))));
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

// dst[i] = act(a·src[i] + b) over n contiguous values.
void affine_act(const float* src, float a, float b, bool act, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vec u = load(src + i) * a + b;
    store(dst + i, act ? u / (1.f + vexp(-u)) : u);
  }
  for (; i < n; ++i) {
    const float u = a * src[i] + b;
    dst[i] = act ? u / (1.f + std::exp(-u)) : u;
  }
}

// Σ src[i] and Σ (src[i] − mean)² over n contiguous values (vector partial sums).
double sum(const float* src, int64_t n, float mean = 0.f, bool squares = false) {
  vec acc{};
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vec d = load(src + i) - mean;
    acc += squares ? d * d : d;
  }
  double total = 0;
  for (int j = 0; j < VL; ++j) total += acc[j];
  for (; i < n; ++i) total += squares ? (src[i] - mean) * (src[i] - mean) : src[i] - mean;
  return total;
}

struct Prologue {
  const float* norm_weight;  // [Cin] or null (no GroupNorm)
  const float* norm_bias;
  const float* scale;        // [B, Cin] or null
  const float* shift;
  int64_t groups;
  double eps;
  bool act;
  int64_t resample;          // 0 none, 1 up, -1 down
};

// Per-channel affine (a, b) of the normalisation for sample `n`: value = a·x + b.
void affine(const Prologue& p, const float* x, int64_t n, int64_t c, int64_t hw, float* a, float* b) {
  if (!p.norm_weight) {
    std::fill(a, a + c, 1.f);
    std::fill(b, b + c, 0.f);
    return;
  }
  const int64_t cg = c / p.groups, count = cg * hw;
  for (int64_t grp = 0; grp < p.groups; ++grp) {
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

// Writes act(a·x + b), resampled, into the bordered buffer (borders stay zero); `row` is scratch
// for one input channel.
void fill(const Prologue& p, const Geometry& g, const float* x, int64_t hin, int64_t win,
          const float* a, const float* b, float* row, float* xp) {
  for (int64_t c = 0; c < g.cin; ++c) {
    float* dst = xp + c * g.plane + g.wp + 1;
    if (p.resample == 0 && win >= VL) {  // rows of whole vectors: straight into the buffer
      for (int64_t i = 0; i < g.h; ++i) affine_act(x + (c * hin + i) * win, a[c], b[c], p.act, win, dst + i * g.wp);
      continue;
    }
    affine_act(x + c * hin * win, a[c], b[c], p.act, hin * win, row);  // the plane, vectorised
    for (int64_t i = 0; i < g.h; ++i) {
      float* d = dst + i * g.wp;
      if (p.resample == 0) {
        for (int64_t j = 0; j < g.w; ++j) d[j] = row[i * win + j];
      } else if (p.resample == 1) {
        const float* s = row + (i / 2) * win;
        for (int64_t j = 0; j < g.w; ++j) d[j] = s[j / 2];
      } else {
        const float *s0 = row + 2 * i * win, *s1 = s0 + win;
        for (int64_t j = 0; j < g.w; ++j) d[j] = 0.25f * (s0[2 * j] + s0[2 * j + 1] + s1[2 * j] + s1[2 * j + 1]);
      }
    }
  }
}

// y = (tile + residual) · out_scale for one output channel, dropping the two pad columns per row.
void store_rows(const Geometry& g, const float* tile, const float* residual, float out_scale, float* y) {
  for (int64_t i = 0; i < g.h; ++i) {
    const float* t = tile + i * g.wp;
    float* d = y + i * g.w;
    if (residual) {
      const float* r = residual + i * g.w;
      for (int64_t j = 0; j < g.w; ++j) d[j] = (t[j] + r[j]) * out_scale;
    } else {
      for (int64_t j = 0; j < g.w; ++j) d[j] = t[j] * out_scale;
    }
  }
}

// This thread's scratch of at least `need` floats, reused across calls.
float* scratch(int64_t need) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < need) buffer.resize(need);
  return buffer.data();
}

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check_vector(const std::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
              "conv_block: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t->sizes() == shape, "conv_block: ", name, " must be ", shape, ", got ", t->sizes());
}

struct Sizes {
  int64_t n, cin, hin, win, cout, h, w;
  int taps;
};

// The op's argument checks (the Python wrapper raises typed errors first); returns the sizes.
Sizes check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                 const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t groups,
                 int64_t resample, const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              "conv_block: x must be a contiguous float32 CPU tensor [B, C, H, W]");
  const int64_t n = x.size(0), cin = x.size(1), hin = x.size(2), win = x.size(3);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == cin && weight.size(2) == weight.size(3) &&
              (weight.size(2) == 3 || weight.size(2) == 1),
              "conv_block: weight must be [Cout, ", cin, ", 3, 3] or [Cout, ", cin, ", 1, 1], got ", weight.sizes());
  TORCH_CHECK(resample >= -1 && resample <= 1, "conv_block: resample must be -1, 0 or 1");
  TORCH_CHECK(resample != -1 || (hin % 2 == 0 && win % 2 == 0), "conv_block: 2× down needs even H and W");
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value(), "conv_block: norm_weight and norm_bias go together");
  TORCH_CHECK(!norm_weight.has_value() || (groups > 0 && cin % groups == 0),
              "conv_block: ", cin, " channels do not split into ", groups, " groups");
  TORCH_CHECK(norm_weight.has_value() || (!scale.has_value() && !shift.has_value()),
              "conv_block: scale/shift modulate the GroupNorm");
  const int64_t cout = weight.size(0);
  const int64_t h = resample == 1 ? 2 * hin : resample == -1 ? hin / 2 : hin;
  const int64_t w = resample == 1 ? 2 * win : resample == -1 ? win / 2 : win;
  const int taps = static_cast<int>(weight.size(2) * weight.size(3));
  check_vector(weight, "weight", {cout, cin, weight.size(2), weight.size(3)});
  check_vector(bias, "bias", {cout});
  check_vector(norm_weight, "norm_weight", {cin});
  check_vector(norm_bias, "norm_bias", {cin});
  check_vector(scale, "scale", {n, cin});
  check_vector(shift, "shift", {n, cin});
  check_vector(add, "add", {n, cout});
  check_vector(residual, "residual", {n, cout, h, w});

  return {n, cin, hin, win, cout, h, w, taps};
}

}  // namespace

at::Tensor conv_block(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                      int64_t groups, double eps, bool act, int64_t resample,
                      const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual,
                      double out_scale) {
  const Sizes sz = check_args(x, weight, bias, norm_weight, norm_bias, scale, shift, groups, resample, add, residual);
  const int64_t n = sz.n, cin = sz.cin, hin = sz.hin, win = sz.win, cout = sz.cout, h = sz.h, w = sz.w;
  const int taps = sz.taps;  // (not structured bindings: C++17 lambdas cannot capture those)
  const Geometry g = geometry(cin, cout, h, w, taps);
  const Prologue pro{data_or_null(norm_weight), data_or_null(norm_bias), data_or_null(scale),
                     data_or_null(shift), groups, eps, act, resample};
  const float *xd = x.data_ptr<float>(), *wd = weight.data_ptr<float>(), *bd = data_or_null(bias);
  const float *ad = data_or_null(add), *rd = data_or_null(residual);
  at::Tensor y = at::detail::empty_cpu({n, cout, h, w}, at::kFloat, false, std::nullopt);  // no dispatch
  float* yd = y.data_ptr<float>();
  const float os = static_cast<float>(out_scale);
  // Scratch per sample: the bordered input, the tiles, the affine (a, b), the tile init, one plane.
  const int64_t xp_size = g.cin * g.plane, tmp_size = g.cout * g.padded;
  const int64_t need = xp_size + tmp_size + 2 * cin + g.cout + hin * win;
  auto prepare = [&](int64_t s, float* xp) {  // prologue of sample s, and its tile init
    float *a = xp + xp_size + tmp_size, *b = a + cin, *init = b + cin, *row = init + g.cout;
    std::fill(xp, xp + xp_size, 0.f);
    affine(pro, xd + s * cin * hin * win, s, cin, hin * win, a, b);
    fill(pro, g, xd + s * cin * hin * win, hin, win, a, b, row, xp);
    for (int64_t c = 0; c < cout; ++c) init[c] = (bd ? bd[c] : 0.f) + (ad ? ad[s * cout + c] : 0.f);
  };
  auto finish = [&](int64_t s, float* xp, int64_t c0, int64_t c1) {  // channels [c0, c1) of sample s
    float *tmp = xp + xp_size, *init = tmp + tmp_size + 2 * cin;
    convolve(g, xp, wd, init, tmp, c0, c1);
    for (int64_t c = c0; c < c1; ++c)
      store_rows(g, tmp + c * g.padded, rd ? rd + (s * cout + c) * h * w : nullptr, os, yd + (s * cout + c) * h * w);
  };
  // One sample of enough work (~30 µs on one core): threads split its output channels. Below that a
  // fork-join costs more than it saves (the digits student's largest convolution is 1.2 MFLOP).
  const double flops = 2.0 * cout * cin * taps * h * w;
  if (n == 1 && at::get_num_threads() > 1 && flops >= 2e6) {
    float* xp = scratch(need);
    prepare(0, xp);
    at::parallel_for(0, (cout + CB - 1) / CB, 1, [&](int64_t b0, int64_t b1) {
      finish(0, xp, b0 * CB, std::min(b1 * CB, cout));
    });
  } else {
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      float* xp = scratch(need);
      for (int64_t s = begin; s < end; ++s) {
        prepare(s, xp);
        finish(s, xp, 0, cout);
      }
    });
  }
  return y;
}

TORCH_LIBRARY(fastflow_cpu, m) {
  m.def("conv_block(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, Tensor? norm_bias, "
        "Tensor? scale, Tensor? shift, int groups, float eps, bool act, int resample, Tensor? add, "
        "Tensor? residual, float out_scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastflow_cpu, CPU, m) { m.impl("conv_block", &conv_block); }

namespace {
std::optional<at::Tensor> optional_tensor(AtenTensorHandle* h) {
  if (!h) return std::nullopt;
  return *torch::aot_inductor::tensor_handle_to_tensor_pointer(*h);
}
}  // namespace

// The C shim AOTInductor calls (`aot_inductor.custom_ops_to_c_shims`); same argument order.
extern "C" AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_conv_block(
    AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle* bias, AtenTensorHandle* norm_weight,
    AtenTensorHandle* norm_bias, AtenTensorHandle* scale, AtenTensorHandle* shift, int64_t groups,
    double eps, int32_t act, int64_t resample, AtenTensorHandle* add, AtenTensorHandle* residual,
    double out_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    at::Tensor y = conv_block(*torch::aot_inductor::tensor_handle_to_tensor_pointer(x),
                              *torch::aot_inductor::tensor_handle_to_tensor_pointer(weight),
                              optional_tensor(bias), optional_tensor(norm_weight), optional_tensor(norm_bias),
                              optional_tensor(scale), optional_tensor(shift), groups, eps, act != 0,
                              resample, optional_tensor(add), optional_tensor(residual), out_scale);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}
