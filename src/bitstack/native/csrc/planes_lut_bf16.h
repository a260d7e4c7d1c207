// The bfloat16 variant of the lookup-table product (AVX-512 with BF16 and VBMI; used for
// bfloat16 activations and group sizes that are whole bytes).
//
// One table per sign byte instead of per nibble: 32 bfloat16 entries, the 16 signed sums of the
// byte's low 4 inputs then the 16 of its high 4, 64 bytes (one zmm).  For 16 rows, one vpermw
// looks up both nibbles of a byte at once (word 2r: the low nibble of row r, index 0-15; word
// 2r+1: its high nibble, index 16-31) and one vdpbf16ps (times 1.0) adds the pair into row r's
// float32 accumulator.  Half the shuffles of the float32 variant per weight; the table entries
// are rounded to bfloat16 (relative error <= 2^-9 each), within a bfloat16 output's own rounding.
#pragma once

#include "planes_lut.h"

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__) && defined(__AVX512BW__)
#define BITSTACK_BF16_TABLES 1

namespace bitstack_native {

// out[0..31] (bfloat16 bits): the signed sums of x[0..3] then of x[4..7]
inline void table32_bf16(const float* x, uint16_t* out) {
  alignas(64) float lo[16], hi[16];
  Simd::table16(x, lo);
  Simd::table16(x + 4, hi);
  const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_load_ps(hi), _mm512_load_ps(lo));  // lo -> 0..15, hi -> 16..31
  _mm512_storeu_si512(out, (__m512i)both);
}

// Index words for byte q (0-3) of every row's dword: word 0 = low nibble, word 1 = 16 + high nibble.
inline __m512i byte_indices(__m512i words, int q) {
  const long long a = 8 * q, b = 8 * q + 4;
  const __m512i ctrl = _mm512_set1_epi64(a | (b << 16) | ((a + 32) << 32) | ((b + 32) << 48));
  return _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(ctrl, words), _mm512_set1_epi32(0x000F000F),
                                   _mm512_set1_epi32(0x00100000), 0xEA);  // (x & mask) | 16 << 16
}

// One sign byte (byte q of each row's dword v[i]) of every plane and token: acc[..][a] += both
// nibbles' table entries (tables at tab + t · token_stride).
template <int PJ, int PT, int A>
inline void lookup_byte(__m512 (&acc)[PJ][PT][A], const __m512i (&v)[PJ], int q, int a, const uint16_t* tab,
                        size_t token_stride) {
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
  __m512i tb[PT];
  for (int t = 0; t < PT; ++t) tb[t] = _mm512_loadu_si512(tab + t * token_stride);
  for (int i = 0; i < PJ; ++i) {
    const __m512i idx = byte_indices(v[i], q);
    for (int t = 0; t < PT; ++t)
      acc[i][t][a % A] = _mm512_dpbf16_ps(acc[i][t][a % A], (__m512bh)_mm512_permutexvar_epi16(idx, tb[t]), ones);
  }
}

// Bytes [begin, end) of the chunk whose first byte is `first`; otherwise as lut_span.
template <int PJ, int PT>
void lut_span_bf16(const Problem& p, const Scratch& s, float* y, int64_t first, int64_t begin, int64_t end, int j0,
                   int t0) {
  constexpr int R = 16;
  constexpr int A = accumulators(PJ * PT);
  const int64_t per_group = p.group_size / 8;
  const uint16_t* tab = p.tables_bf16 + size_t(t0) * p.row_bytes * 32;
  const size_t token_stride = size_t(p.row_bytes) * 32;
  int64_t n = begin;
  while (n < end) {
    const int64_t g = n / per_group;
    const int64_t stop = std::min(end, (g + 1) * per_group);
    __m512 acc[PJ][PT][A];  // A accumulators per (plane, token): independent dependency chains
    for (int i = 0; i < PJ; ++i)
      for (int t = 0; t < PT; ++t)
        for (int a = 0; a < A; ++a) acc[i][t][a] = _mm512_setzero_ps();
    while (n < stop) {
      const int64_t m = n - first;
      const uint32_t* words = s.chunk.data() + (size_t(j0) * R + size_t(m >> 2)) * R;
      __m512i v[PJ];
      for (int i = 0; i < PJ; ++i) v[i] = _mm512_loadu_si512(words + size_t(i) * R * R);
      if ((m & 3) == 0 && stop - n >= 4) {  // a whole dword: bytes 0-3, compile-time controls
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) lookup_byte<PJ, PT, A>(acc, v, q, q, tab + (n + q) * 32, token_stride);
        n += 4;
      } else {
        lookup_byte<PJ, PT, A>(acc, v, int(m & 3), 0, tab + n * 32, token_stride);
        n += 1;
      }
    }
    const __m512 st = _mm512_mul_ps(_mm512_loadu_ps(s.step.data() + g * R), _mm512_set1_ps(1.0f / float(int64_t(1) << j0)));
    for (int i = 0; i < PJ; ++i)
      for (int t = 0; t < PT; ++t)
        for (int a = 1; a < A; ++a) acc[i][t][0] = _mm512_add_ps(acc[i][t][0], acc[i][t][a]);
    for (int t = 0; t < PT; ++t) {
      __m512 comb = acc[PJ - 1][t][0];
      for (int i = PJ - 2; i >= 0; --i) comb = _mm512_fmadd_ps(comb, _mm512_set1_ps(0.5f), acc[i][t][0]);
      float* yt = y + size_t(t0 + t) * R;
      _mm512_storeu_ps(yt, _mm512_fmadd_ps(st, comb, _mm512_loadu_ps(yt)));
    }
  }
}

template <int PJ>
SpanFn span_bf16_for_tokens(int pt) {
  switch (pt) {
    case 1: return &lut_span_bf16<PJ, 1>;
    case 2: return &lut_span_bf16<PJ, 2>;
    case 3: return &lut_span_bf16<PJ, 3>;
    default: return &lut_span_bf16<PJ, 4>;
  }
}

inline SpanFn span_fn_bf16(int pj, int pt) {
  switch (pj) {
    case 1: return span_bf16_for_tokens<1>(pt);
    case 2: return span_bf16_for_tokens<2>(pt);
    case 3: return span_bf16_for_tokens<3>(pt);
    default: return span_bf16_for_tokens<4>(pt);
  }
}

}  // namespace bitstack_native
#endif
