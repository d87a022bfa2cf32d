// The int8 kernel of fastflow_cpu::conv_block_q8 (conv_block.h has the formula; block_common.h the layouts,
// the prologue and the tiles).
//
// The prologue is the fp32 kernel's (GroupNorm + modulation + SiLU + resampling in float, into the tiles'
// layout); its activations are then quantised once per sample over their own range:
//   s = (max(a, 0) − min(a, 0)) / L,  z = round(−min(a, 0) / s),  q = clamp(round(a / s) + z, 0, L)
// (asymmetric, so zero — every border and padding lane — is exactly z). Four input channels share one
// 32-bit lane, so a tile multiplies a vector of pixels × 4 channels of unsigned bytes with one broadcast
// group of 4 signed weights and sums each lane's four products into int32:
//   VNNI (AVX512-VNNI, AVX-VNNI)  vpdpbusd, L = 255;
//   otherwise                     vpmaddubsw + vpmaddwd, L = 127 (the 16-bit pair sum 2 · 127 · 127
//                                 stays below 32767; with L = 255 it would saturate).
// The epilogue dequantises: y = s·w_scale[c]·(acc − z·Σw[c]) + bias + add, then residual and out_scale.
#include "block_common.h"

#include <tuple>

namespace fastflow_cpu {
namespace {

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
constexpr int64_t LEVELS = 255;
inline ivec dot4(ivec acc, ivec a, ivec b) { return (ivec)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)a, (__m512i)b); }
#elif defined(__AVX512F__) && defined(__AVX512BW__)
constexpr int64_t LEVELS = 127;
inline ivec dot4(ivec acc, ivec a, ivec b) {
  const __m512i pairs = _mm512_maddubs_epi16((__m512i)a, (__m512i)b);
  return acc + (ivec)_mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
}
#elif !defined(__AVX512F__) && defined(__AVXVNNI__)
constexpr int64_t LEVELS = 255;
inline ivec dot4(ivec acc, ivec a, ivec b) {
  return (ivec)_mm256_dpbusd_avx_epi32((__m256i)acc, (__m256i)a, (__m256i)b);
}
#elif !defined(__AVX512F__) && defined(__AVX2__)
constexpr int64_t LEVELS = 127;
inline ivec dot4(ivec acc, ivec a, ivec b) {
  const __m256i pairs = _mm256_maddubs_epi16((__m256i)a, (__m256i)b);
  return acc + (ivec)_mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
#else
#error "the int8 CPU block kernel needs AVX2 (or AVX-512BW)"
#endif

// round-to-nearest-even of each lane (the current rounding mode), as torch.round does
inline ivec round_lanes(vec v) {
#if defined(__AVX512F__)
  return (ivec)_mm512_cvtps_epi32((__m512)v);
#else
  return (ivec)_mm256_cvtps_epi32((__m256)v);
#endif
}

inline ivec iload(const int32_t* p) { ivec v; std::memcpy(&v, p, sizeof v); return v; }
inline void istore(int32_t* p, ivec v) { std::memcpy(p, &v, sizeof v); }

// The int8 tiles: a vector of pixels × 4 channels (bytes of one int32 lane) times a broadcast group of 4
// weights, summed in int32 and dequantised per output channel at the store.
struct Q8 {
  using In = int32_t;
  using W = int32_t;
  using Acc = ivec;
  struct Rows {
    const float* scale;   // s · w_scale[c]
    const float* offset;  // bias + add − s · w_scale[c] · z · Σw[c]
    Rows at(int64_t c0) const { return {scale + c0, offset + c0}; }
  };
  static int64_t depth(const Geometry& g) { return (g.cin + 3) / 4; }
  static ivec start(const Rows&, int) { return ivec{}; }
  static ivec load(const int32_t* p) { return iload(p); }
  static ivec broadcast(int32_t w) { return ivec{} + w; }
  static void madd(ivec& acc, ivec a, ivec b) { acc = dot4(acc, a, b); }
  static vec finish(const Rows& r, int row, ivec acc) {
    return __builtin_convertvector(acc, vec) * r.scale[row] + r.offset[row];
  }
};

// (min(·, 0), max(·, 0)) over n contiguous values.
std::pair<float, float> range(const float* x, int64_t n) {
  vec lo_v = vec{}, hi_v = vec{};
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vec v = load(x + i);
    lo_v = v < lo_v ? v : lo_v;
    hi_v = v > hi_v ? v : hi_v;
  }
  float lo = 0.f, hi = 0.f;
  for (int j = 0; j < VL; ++j) lo = std::min(lo, lo_v[j]), hi = std::max(hi, hi_v[j]);
  for (; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  return {lo, hi};
}

// Quantisation of one sample's activations `xp` ([cin][plane] floats) into `q` ([ceil(cin/4)][plane] lanes
// of four bytes: channel 4·b + j in byte j); returns (s, z). `split`: threads share the channels.
std::pair<float, float> quantise(const Geometry& g, const float* xp, int32_t* q, bool split) {
  std::vector<float> lows(g.cin), highs(g.cin);  // per channel, then combined: the same result on any split
  at::parallel_for(0, g.cin, split ? 1 : g.cin + 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) std::tie(lows[c], highs[c]) = range(xp + c * g.plane, g.plane);
  });
  const float lo = *std::min_element(lows.begin(), lows.end()), hi = *std::max_element(highs.begin(), highs.end());
  float s = (hi - lo) / static_cast<float>(LEVELS);
  if (!(s > 0.f)) s = 1.f;  // an all-zero input (or no finite range): any scale represents it
  const float inv = 1.f / s;
  const float z = std::nearbyint(-lo * inv);
  const int64_t blocks = (g.cin + 3) / 4;
  const ivec zv = ivec{} + static_cast<int32_t>(z), top = ivec{} + static_cast<int32_t>(LEVELS);
  at::parallel_for(0, blocks, split ? 1 : blocks + 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* ch[4];
      for (int j = 0; j < 4; ++j) ch[j] = 4 * b + j < g.cin ? xp + (4 * b + j) * g.plane : nullptr;
      int32_t* dst = q + b * g.plane;
      int64_t p = 0;
      for (; p + VL <= g.plane; p += VL) {
        ivec lane = ivec{};
        for (int j = 0; j < 4; ++j) {
          if (!ch[j]) continue;  // padding channels: weight 0
          ivec v = round_lanes(load(ch[j] + p) * inv) + zv;
          v = v < 0 ? ivec{} : v;
          v = v > top ? top : v;
          lane |= v << (8 * j);
        }
        istore(dst + p, lane);
      }
      for (; p < g.plane; ++p) {
        uint32_t lane = 0;
        for (int j = 0; j < 4; ++j) {
          if (!ch[j]) continue;
          const float v = std::nearbyint(ch[j][p] * inv) + z;
          lane |= static_cast<uint32_t>(std::clamp(v, 0.f, static_cast<float>(LEVELS))) << (8 * j);
        }
        dst[p] = static_cast<int32_t>(lane);
      }
    }
  });
  return {s, z};
}

}  // namespace

int64_t int8_levels() { return LEVELS; }

void run_conv_block_q8(const ConvBlockArgs& p) {
  const Geometry g = geometry(p.cin, p.cout, p.h, p.w, p.taps);
  const int64_t blocks = (p.cin + 3) / 4, k = blocks * p.taps;
  const int32_t* w = reinterpret_cast<const int32_t*>(p.qweight);
  std::vector<float> wsum(p.cout);  // Σ of each output channel's int8 weights
  for (int64_t c = 0; c < p.cout; ++c) {  // int32: |Σ| ≤ 127 · 4k, and the loop vectorises
    int32_t total = 0;
    const int8_t* row = p.qweight + c * 4 * k;
    for (int64_t i = 0; i < 4 * k; ++i) total += row[i];
    wsum[c] = static_cast<float>(total);
  }
  // own scratch: the quantised planes, then per output channel the dequantisation (scale, offset), then (s, z)
  const int64_t qsize = blocks * g.plane, extra = qsize + 2 * p.cout + 2;
  run_block(p, g, extra,
            [&](float* xp, float* own, bool split) {
              const auto [s, z] = quantise(g, xp, reinterpret_cast<int32_t*>(own), split);
              own[qsize + 2 * p.cout] = s;
              own[qsize + 2 * p.cout + 1] = z;
            },
            [&](const float*, float* own, float* tmp, const float* init, int64_t c0, int64_t c1) {
              const float s = own[qsize + 2 * p.cout], z = own[qsize + 2 * p.cout + 1];
              float *scale = own + qsize, *offset = scale + p.cout;
              for (int64_t c = c0; c < c1; ++c) {
                scale[c] = s * p.w_scale[c];
                offset[c] = init[c] - scale[c] * z * wsum[c];
              }
              const int32_t* q = reinterpret_cast<const int32_t*>(own);
              const Q8::Rows rows{scale, offset};
              if (g.taps == 9) convolve<Q8, 9>(g, q, w, rows, tmp, c0, c1);
              else convolve<Q8, 1>(g, q, w, rows, tmp, c0, c1);
            });
}

}  // namespace fastflow_cpu
