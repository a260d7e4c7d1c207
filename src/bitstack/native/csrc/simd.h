// Vector back-ends of the planes CPU kernel, chosen at compile time from the target's features
// (the build passes -march=native, or an explicit ISA, and the preprocessor picks one):
//
//   AVX-512 (F + BW): R = 16 rows per block, a 16-float table lives in one zmm and one
//                     vpermps looks it up for 16 rows at once (the index is the low 4 bits of
//                     each 32-bit lane).
//   AVX2 + FMA:       R = 8 rows, the table in two ymm, two vpermps and a blend on bit 3.
//   scalar:           R = 1, any CPU.
//
// Every back-end offers the same static interface (F: R floats, I: R 32-bit indices, Tab: one
// 16-entry float table):
//   zero, set1, load, store, add, fma(a, b, c) = a * b + c, mul, load_i, srl, load_tab, lookup,
//   halves(src, n, dst): n float16 bit patterns -> floats; transpose_grid(src, live, G, dst):
//   src [R][G] floats (rows >= live read as 0) -> dst [G][R];  table16(x, out): the 16 signed sums
//   of x[0..3] (out[b] = Σ_j ±x[j], + where bit j of b is set);
//   transpose(rows, out): rows[r] points at 4R bytes of sign row r; writes out[w * R + r] =
//   little-endian dword w of row r (w < R), i.e. the R x R dword matrix transposed;
//   kMaskedTail: whether transpose_head(rows, bytes, out) reads only `bytes` < 4R bytes of each
//   row (the bytes after them taken as 0); else the caller copies short rows into padding.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace bitstack_native {

inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

inline float half_to_float(uint16_t h) {  // IEEE binary16 bits -> float, exact
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: man · 2^-24
    const float v = float(man) * (1.0f / 16777216.0f);
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// The 16 signed sums of 4 inputs: out[b] = Σ_j (bit j of b ? +1 : -1) · x[j].
inline void table16_scalar(const float* x, float* out) {
  for (int b = 0; b < 16; ++b)
    out[b] = ((b & 1) ? x[0] : -x[0]) + ((b & 2) ? x[1] : -x[1]) + ((b & 4) ? x[2] : -x[2]) + ((b & 8) ? x[3] : -x[3]);
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define BITSTACK_SIMD_NAME "avx512"
struct Simd {
  static constexpr int R = 16;
  using F = __m512;
  using I = __m512i;
  using Tab = __m512;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static I load_i(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static I srl4(I v) { return _mm512_srli_epi32(v, 4); }
  static I srl(I v, int s) { return _mm512_srl_epi32(v, _mm_cvtsi32_si128(s)); }
  static Tab load_tab(const float* p) { return _mm512_loadu_ps(p); }
  static F lookup(const Tab& t, I idx) { return _mm512_permutexvar_ps(idx, t); }
  static void halves(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
  static void table16(const float* x, float* out) {
    const __m512i b = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      const __mmask16 m = _mm512_test_epi32_mask(b, _mm512_set1_epi32(1 << j));
      const __m512 v = _mm512_set1_ps(x[j]);
      acc = _mm512_add_ps(acc, _mm512_mask_blend_ps(m, _mm512_sub_ps(_mm512_setzero_ps(), v), v));
    }
    _mm512_storeu_ps(out, acc);
  }

  static constexpr bool kMaskedTail = true;  // transpose_head reads only the first `bytes` bytes of each row
  static void transpose(const uint8_t* const* rows, uint32_t* out) { transpose_mask(rows, ~__mmask64(0), out); }
  static void transpose_head(const uint8_t* const* rows, int bytes, uint32_t* out) {
    transpose_mask(rows, __mmask64((1ull << bytes) - 1), out);  // bytes < 64
  }
  // src [R][G] floats, rows >= live taken as 0 -> dst [G][R]
  static void transpose_grid(const float* src, int64_t live, int64_t G, float* dst) {
    static const float zeros[16] = {};
    const uint8_t* rows[16];
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
      const int64_t width = std::min<int64_t>(16, G - g0);
      for (int r = 0; r < 16; ++r)
        rows[r] = reinterpret_cast<const uint8_t*>(r < live ? src + r * G + g0 : zeros);
      alignas(64) uint32_t tile[256];
      transpose_mask(rows, width == 16 ? ~__mmask64(0) : __mmask64((1ull << (4 * width)) - 1), tile);
      std::memcpy(dst + g0 * 16, tile, size_t(width) * 64);
    }
  }
  static void transpose_mask(const uint8_t* const* rows, __mmask64 m, uint32_t* out) {
    __m512i u[4][4];  // u[group of 4 rows][k]: lane L holds column 4L + k of those rows
    for (int a = 0; a < 4; ++a) {
      const __m512i r0 = _mm512_maskz_loadu_epi8(m, rows[4 * a]), r1 = _mm512_maskz_loadu_epi8(m, rows[4 * a + 1]);
      const __m512i r2 = _mm512_maskz_loadu_epi8(m, rows[4 * a + 2]), r3 = _mm512_maskz_loadu_epi8(m, rows[4 * a + 3]);
      const __m512i t0 = _mm512_unpacklo_epi32(r0, r1), t1 = _mm512_unpackhi_epi32(r0, r1);
      const __m512i t2 = _mm512_unpacklo_epi32(r2, r3), t3 = _mm512_unpackhi_epi32(r2, r3);
      u[a][0] = _mm512_unpacklo_epi64(t0, t2);
      u[a][1] = _mm512_unpackhi_epi64(t0, t2);
      u[a][2] = _mm512_unpacklo_epi64(t1, t3);
      u[a][3] = _mm512_unpackhi_epi64(t1, t3);
    }
    for (int k = 0; k < 4; ++k) {
      const __m512i ab_lo = _mm512_shuffle_i32x4(u[0][k], u[1][k], 0x44), ab_hi = _mm512_shuffle_i32x4(u[0][k], u[1][k], 0xEE);
      const __m512i cd_lo = _mm512_shuffle_i32x4(u[2][k], u[3][k], 0x44), cd_hi = _mm512_shuffle_i32x4(u[2][k], u[3][k], 0xEE);
      _mm512_storeu_si512(out + (0 + k) * 16, _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88));
      _mm512_storeu_si512(out + (4 + k) * 16, _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD));
      _mm512_storeu_si512(out + (8 + k) * 16, _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88));
      _mm512_storeu_si512(out + (12 + k) * 16, _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD));
    }
  }
};

#elif defined(__AVX2__) && defined(__FMA__)
#define BITSTACK_SIMD_NAME "avx2"
struct Simd {
  static constexpr int R = 8;
  using F = __m256;
  using I = __m256i;
  struct Tab {
    __m256 lo, hi;
  };
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static I load_i(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I srl4(I v) { return _mm256_srli_epi32(v, 4); }
  static I srl(I v, int s) { return _mm256_srl_epi32(v, _mm_cvtsi32_si128(s)); }
  static Tab load_tab(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void halves(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
  static void table16(const float* x, float* out) { table16_scalar(x, out); }
  static F lookup(const Tab& t, I idx) {
    const __m256 lo = _mm256_permutevar8x32_ps(t.lo, idx), hi = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign bit
  }

  static constexpr bool kMaskedTail = false;
  static void transpose_head(const uint8_t* const*, int, uint32_t*) {}
  static void transpose_grid(const float* src, int64_t live, int64_t G, float* dst) {
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < R; ++r) dst[g * R + r] = r < live ? src[r * G + g] : 0.0f;
  }
  static void transpose(const uint8_t* const* rows, uint32_t* out) {
    __m256i u[2][4];
    for (int a = 0; a < 2; ++a) {
      const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[4 * a]));
      const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[4 * a + 1]));
      const __m256i r2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[4 * a + 2]));
      const __m256i r3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[4 * a + 3]));
      const __m256i t0 = _mm256_unpacklo_epi32(r0, r1), t1 = _mm256_unpackhi_epi32(r0, r1);
      const __m256i t2 = _mm256_unpacklo_epi32(r2, r3), t3 = _mm256_unpackhi_epi32(r2, r3);
      u[a][0] = _mm256_unpacklo_epi64(t0, t2);
      u[a][1] = _mm256_unpackhi_epi64(t0, t2);
      u[a][2] = _mm256_unpacklo_epi64(t1, t3);
      u[a][3] = _mm256_unpackhi_epi64(t1, t3);
    }
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (0 + k) * 8), _mm256_permute2x128_si256(u[0][k], u[1][k], 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (4 + k) * 8), _mm256_permute2x128_si256(u[0][k], u[1][k], 0x31));
    }
  }
};

#else
#define BITSTACK_SIMD_NAME "scalar"
struct Simd {
  static constexpr int R = 1;
  using F = float;
  using I = uint32_t;
  using Tab = const float*;
  static F zero() { return 0.0f; }
  static F set1(float v) { return v; }
  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static I load_i(const uint32_t* p) { return *p; }
  static I srl4(I v) { return v >> 4; }
  static I srl(I v, int s) { return v >> s; }
  static Tab load_tab(const float* p) { return p; }
  static F lookup(const Tab& t, I idx) { return t[idx & 15u]; }
  static void halves(const uint16_t* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
  static void table16(const float* x, float* out) { table16_scalar(x, out); }
  static constexpr bool kMaskedTail = false;
  static void transpose_head(const uint8_t* const*, int, uint32_t*) {}
  static void transpose_grid(const float* src, int64_t live, int64_t G, float* dst) {
    for (int64_t g = 0; g < G; ++g)
      for (int r = 0; r < R; ++r) dst[g * R + r] = r < live ? src[r * G + g] : 0.0f;
  }
  static void transpose(const uint8_t* const* rows, uint32_t* out) { out[0] = load_le32(rows[0]); }
};
#endif

}  // namespace bitstack_native
