// Ŵ = C + Σ_i S_i ⊙ step·2^-i rebuilt row by row from the packed sign planes (the prefill path:
// many tokens are cheaper as one rebuild and a matrix product than as table lookups).
#pragma once

#include <cstdint>

#include "planes_lut.h"

namespace bitstack_native {

// Row `row` of Ŵ as floats into out[0 … in_features): the planes' ±step·2^-i added to C.
inline void dense_row(const uint8_t* const* signs, int64_t planes, int64_t row, int64_t in_features, int64_t row_bytes,
                      const uint16_t* offset, const uint16_t* step, int64_t groups, int64_t group_size, float* out) {
  const uint16_t* c = offset + row * groups;
  const uint16_t* st = step + row * groups;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t k0 = g * group_size, k1 = std::min(in_features, k0 + group_size);
    const float centre = half_to_float(c[g]), base = half_to_float(st[g]);
    int64_t k = k0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    // 16 columns at a time from 2 bytes per plane (k is a multiple of 8 at every group start)
    for (; k + 16 <= k1 && (k & 7) == 0; k += 16) {
      __m512 w = _mm512_set1_ps(centre);
      float d = base;
      for (int64_t i = 0; i < planes; ++i, d *= 0.5f) {
        const uint8_t* b = signs[i] + row * row_bytes + (k >> 3);
        const __mmask16 m = __mmask16(uint32_t(b[0]) | (uint32_t(b[1]) << 8));
        w = _mm512_add_ps(w, _mm512_mask_blend_ps(m, _mm512_set1_ps(-d), _mm512_set1_ps(d)));
      }
      _mm512_storeu_ps(out + k, w);
    }
#endif
    for (; k < k1; ++k) {
      float w = centre, d = base;
      for (int64_t i = 0; i < planes; ++i, d *= 0.5f) {
        const uint8_t bit = (signs[i][row * row_bytes + (k >> 3)] >> (k & 7)) & 1u;
        w += bit ? d : -d;
      }
      out[k] = w;
    }
  }
}

}  // namespace bitstack_native
