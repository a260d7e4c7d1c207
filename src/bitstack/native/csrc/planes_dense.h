// Ŵ = C + Σ_i S_i ⊙ step·2^-i rebuilt row by row from the packed sign planes (the prefill path:
// many tokens are cheaper as one rebuild and a matrix product than as table lookups).
//
// Per (row, group) the value starts at C and adds ±step·2^-i plane by plane, in float32, in
// block order: the operations of bitstack's planes_reconstruct, so the float32 result is equal
// bit for bit, and a bfloat16 / float16 result (rounded to nearest even) equals its cast.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

namespace bitstack_native {

// floats -> bfloat16 (round to nearest even, NaN -> 0x7FC0: c10::BFloat16's conversion)
inline void store_bf16(const float* src, int64_t n, c10::BFloat16* dst) {
  int64_t k = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), nan = _mm512_set1_epi32(0x7FC0);
  for (; k + 16 <= n; k += 16) {
    const __m512 v = _mm512_loadu_ps(src + k);
    const __m512i bits = _mm512_castps_si512(v);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(bits, 16), one))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), nan);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm512_cvtepi32_epi16(r));
  }
#endif
  for (; k < n; ++k) dst[k] = c10::BFloat16(src[k]);
}

inline void store_half(const float* src, int64_t n, c10::Half* dst) {
  for (int64_t k = 0; k < n; ++k) dst[k] = c10::Half(src[k]);
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 columns of one group from 2 sign bytes per plane (column k = 16 · `at16`)
inline __m512 dense16(const uint8_t* const* signs, int64_t planes, int64_t at, float centre, const __m512* pos,
                      const __m512* neg, float tail) {
  __m512 w = _mm512_set1_ps(centre);
  const int64_t head = std::min<int64_t>(planes, 16);
  for (int64_t i = 0; i < head; ++i) {
    uint16_t bits;
    std::memcpy(&bits, signs[i] + at, 2);
    w = _mm512_add_ps(w, _mm512_mask_blend_ps(__mmask16(bits), neg[i], pos[i]));
  }
  for (int64_t i = head; i < planes; ++i, tail *= 0.5f) {  // planes beyond 16: magnitudes on the fly
    uint16_t bits;
    std::memcpy(&bits, signs[i] + at, 2);
    w = _mm512_add_ps(w, _mm512_mask_blend_ps(__mmask16(bits), _mm512_set1_ps(-tail), _mm512_set1_ps(tail)));
  }
  return w;
}
#endif

// Row `row` of Ŵ into out[0 … in_features): floats (Out = float) or, where the vector path
// covers a stretch, bfloat16 written directly (Out = c10::BFloat16; `scratch` holds the floats of
// the columns the scalar path does, which the caller then rounds with store_bf16).
template <typename Out>
inline void dense_row(const uint8_t* const* signs, int64_t planes, int64_t row, int64_t in_features, int64_t row_bytes,
                      const uint16_t* offset, const uint16_t* step, int64_t groups, int64_t group_size, Out* out,
                      float* scratch) {
  const uint16_t* c = offset + row * groups;
  const uint16_t* st = step + row * groups;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t k0 = g * group_size, k1 = std::min(in_features, k0 + group_size);
    const float centre = half_to_float(c[g]), base = half_to_float(st[g]);
    int64_t k = k0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if ((k0 & 15) == 0 && k + 16 <= k1) {
      __m512 pos[16], neg[16];
      float d = base;
      for (int64_t i = 0; i < std::min<int64_t>(planes, 16); ++i, d *= 0.5f) pos[i] = _mm512_set1_ps(d), neg[i] = _mm512_set1_ps(-d);
      const int64_t at = row * row_bytes;
      if constexpr (std::is_same_v<Out, float>) {
        for (; k + 16 <= k1; k += 16) _mm512_storeu_ps(out + k, dense16(signs, planes, at + (k >> 3), centre, pos, neg, d));
      } else {
#if defined(__AVX512BF16__)
        for (; k + 32 <= k1; k += 32) {
          const __m512 lo = dense16(signs, planes, at + (k >> 3), centre, pos, neg, d);
          const __m512 hi = dense16(signs, planes, at + (k >> 3) + 2, centre, pos, neg, d);
          _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));  // round to nearest even
        }
#endif
        for (; k + 16 <= k1; k += 16) {
          _mm512_storeu_ps(scratch + k, dense16(signs, planes, at + (k >> 3), centre, pos, neg, d));
          store_bf16(scratch + k, 16, out + k);
        }
      }
    }
#endif
    for (; k < k1; ++k) {
      float w = centre, d = base;
      for (int64_t i = 0; i < planes; ++i, d *= 0.5f) {
        const uint8_t bit = (signs[i][row * row_bytes + (k >> 3)] >> (k & 7)) & 1u;
        w += bit ? d : -d;
      }
      if constexpr (std::is_same_v<Out, float>)
        out[k] = w;
      else
        out[k] = Out(w);
    }
  }
}


}  // namespace bitstack_native
