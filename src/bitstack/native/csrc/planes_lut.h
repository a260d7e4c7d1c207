// y = x · Ŵᵀ (+ bias) for a planes weight, computed from its packed sign planes with lookup
// tables shared by all rows and planes (no Ŵ formed).  Notation and math: docs/cpu.md.
//
// With S_i = ±1 the signs of plane i and Ŵ = C + Σ_i S_i ⊙ step·2^-i per (row n, group g):
//
//   y[t, n] = bias[n] + Σ_g ( C[n, g] · X[t, g] + step[n, g] · Σ_i 2^-i P_i[t, n, g] ),
//   P_i[t, n, g] = Σ_{k∈g} S_i[n, k] x[t, k],   X[t, g] = Σ_{k∈g} x[t, k].
//
// P_i is summed 4 columns at a time: for nibble q (columns 4q … 4q+3) the table
// tab[t, q, b] = Σ_j (bit j of b ? +1 : -1) · x[t, 4q + j] holds all 16 signed sums, and the 4
// sign bits of a row at nibble q are its index.  A block of R rows (the vector width) is
// processed together: the sign bytes of R rows are transposed to R-lane index vectors, so one
// vector lookup adds one nibble of R rows.  The per-plane scale 2^-i and the group's step are
// applied once per group ("fold"); C · X once per row.
#pragma once

#include <algorithm>
#include <utility>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace bitstack_native {

struct Problem {
  int64_t tokens, in_features, out_features, planes, groups, group_size;
  int64_t row_bytes;     // ceil(K / 8)
  int64_t nibbles;       // ceil(K / 4)
  const float* tables;   // [tokens][nibbles][16] (float32 tables), or
  const uint16_t* tables_bf16;  // [tokens][row_bytes][32] (bfloat16 byte tables, planes_lut_bf16.h)
  const float* group_x;  // [tokens][groups]: X[t, g]
  const uint8_t* const* signs;  // planes pointers, each (out_features, row_bytes), stored layout
  const uint16_t* offset;       // (out_features, groups) float16 bits
  const uint16_t* step;         // (out_features, groups) float16 bits
  const float* bias;            // (out_features,) or nullptr
};

// Scratch of one thread: transposed sign chunks, the block's outputs and steps, tail rows.  Kept
// per thread (thread_local) across calls, so a call allocates nothing once sizes have been seen.
struct Scratch {
  std::vector<uint32_t> chunk;  // [planes][R][R]
  std::vector<float> y;         // [tokens][R]
  std::vector<float> step;      // [groups][R]
  std::vector<float> offset;    // [groups][R]
  std::vector<float> row;       // [R][groups] the block's grid rows, converted
  std::vector<uint8_t> tail;    // [R][4R] zero-padded copies of rows that end inside a chunk
  void fit(const Problem& p) {  // every buffer is written before it is read: no clearing
    constexpr size_t R = Simd::R;
    chunk.resize(size_t(p.planes) * R * R), y.resize(size_t(p.tokens) * R), tail.resize(R * 4 * R);
    step.resize(size_t(p.groups) * R), offset.resize(size_t(p.groups) * R), row.resize(size_t(p.groups) * R);
  }
};

// Accumulators per (plane, token) in a span: enough independent add chains to cover the add
// latency, few enough to stay in registers.
constexpr int accumulators(int chains) { return chains >= 8 ? 1 : chains >= 4 ? 2 : 4; }

// Nibbles [begin, end) of the chunk whose first nibble is `first`, planes j0 … j0+PJ-1 and
// tokens t0 … t0+PT-1; the partial sums of each group are folded into y at the group's end or
// at `end`.
template <int PJ, int PT>
void lut_span(const Problem& p, const Scratch& s, float* y, int64_t first, int64_t begin, int64_t end, int j0, int t0) {
  using S = Simd;
  constexpr int R = S::R;
  constexpr int A = accumulators(PJ * PT);
  const int64_t per_group = p.group_size / 4;
  const float* tab = p.tables + (size_t(t0) * p.nibbles) * 16;
  const size_t token_stride = size_t(p.nibbles) * 16;
  int64_t n = begin;
  while (n < end) {
    const int64_t g = n / per_group;
    const int64_t stop = std::min(end, (g + 1) * per_group);
    typename S::F acc[PJ][PT][A];  // A accumulators per (plane, token): independent dependency chains
    for (int i = 0; i < PJ; ++i)
      for (int t = 0; t < PT; ++t)
        for (int a = 0; a < A; ++a) acc[i][t][a] = S::zero();
    while (n < stop) {
      const int64_t m = n - first;
      const uint32_t* words = s.chunk.data() + (size_t(j0) * R + size_t(m >> 3)) * R;
      if ((m & 7) == 0 && stop - n >= 8) {  // a whole dword: 8 nibbles, shifting by 4
        typename S::I v[PJ];
        for (int i = 0; i < PJ; ++i) v[i] = S::load_i(words + size_t(i) * R * R);
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) {
          typename S::Tab tb[PT];
          for (int t = 0; t < PT; ++t) tb[t] = S::load_tab(tab + t * token_stride + (n + q) * 16);
          for (int i = 0; i < PJ; ++i) {
            for (int t = 0; t < PT; ++t) acc[i][t][q % A] = S::add(acc[i][t][q % A], S::lookup(tb[t], v[i]));
            if (q < 7) v[i] = S::srl4(v[i]);
          }
        }
        n += 8;
      } else {
        const int shift = int(m & 7) * 4;
        for (int i = 0; i < PJ; ++i) {
          const typename S::I idx = S::srl(S::load_i(words + size_t(i) * R * R), shift);
          for (int t = 0; t < PT; ++t)
            acc[i][t][0] = S::add(acc[i][t][0], S::lookup(S::load_tab(tab + t * token_stride + n * 16), idx));
        }
        n += 1;
      }
    }
    // fold: y += step · 2^-j0 · Σ_i 2^-i acc_i  (Horner in 1/2)
    const typename S::F st = S::mul(S::load(s.step.data() + g * R), S::set1(1.0f / float(int64_t(1) << j0)));
    for (int i = 0; i < PJ; ++i)
      for (int t = 0; t < PT; ++t)
        for (int a = 1; a < A; ++a) acc[i][t][0] = S::add(acc[i][t][0], acc[i][t][a]);
    for (int t = 0; t < PT; ++t) {
      typename S::F comb = acc[PJ - 1][t][0];
      for (int i = PJ - 2; i >= 0; --i) comb = S::fma(comb, S::set1(0.5f), acc[i][t][0]);
      float* yt = y + size_t(t0 + t) * R;
      S::store(yt, S::fma(st, comb, S::load(yt)));
    }
  }
}

using SpanFn = void (*)(const Problem&, const Scratch&, float*, int64_t, int64_t, int64_t, int, int);

template <int PJ>
SpanFn span_for_tokens(int pt) {
  switch (pt) {
    case 1: return &lut_span<PJ, 1>;
    case 2: return &lut_span<PJ, 2>;
    case 3: return &lut_span<PJ, 3>;
    default: return &lut_span<PJ, 4>;
  }
}

inline SpanFn span_fn(int pj, int pt) {
  switch (pj) {
    case 1: return span_for_tokens<1>(pt);
    case 2: return span_for_tokens<2>(pt);
    case 3: return span_for_tokens<3>(pt);
    default: return span_for_tokens<4>(pt);
  }
}


constexpr int kPrefetch = 2;  // measured: 2-3 chunks ahead beat 1 (and a whole row block) on 8192x2048, 2048x8192

// Bytes of a row's chunks (row_bytes rounded up to whole chunks of 4R bytes).
inline int64_t chunks_bytes(const Problem& p) { return (p.row_bytes + 4 * Simd::R - 1) / (4 * Simd::R) * (4 * Simd::R); }

// Transpose plane `plane`'s chunk (bytes [byte0, byte0 + 4R) of rows row0 … row0+R-1) into s.chunk.
inline void load_chunk(const Problem& p, Scratch& s, int64_t plane, int64_t row0, int64_t byte0) {
  constexpr int R = Simd::R;
  static const uint8_t zeros[4 * R] = {};
  const uint8_t* rows[R];
  const uint8_t* base = p.signs[plane];
  const int64_t avail = std::min<int64_t>(4 * R, p.row_bytes - byte0);
  uint32_t* out = s.chunk.data() + size_t(plane) * R * R;
  for (int r = 0; r < R; ++r) {
    const int64_t row = row0 + r;
    if (row >= p.out_features) {
      rows[r] = zeros;
    } else if (avail < 4 * R && !Simd::kMaskedTail) {  // the row ends inside this chunk: a zero-padded copy
      uint8_t* dst = s.tail.data() + size_t(r) * 4 * R;
      std::memset(dst, 0, 4 * R);
      std::memcpy(dst, base + row * p.row_bytes + byte0, size_t(avail));
      rows[r] = dst;
    } else {
      rows[r] = base + row * p.row_bytes + byte0;
      // the chunk kPrefetch chunks ahead in the traversal (this block's later chunks, then the
      // next block's first): the R rows x planes streams are too many for the hardware prefetcher
      const int64_t ahead = byte0 + 4 * R * kPrefetch;
      if (ahead < p.row_bytes)
        __builtin_prefetch(rows[r] + 4 * R * kPrefetch, 0, 0);
      else if (row + R < p.out_features && ahead >= chunks_bytes(p))
        __builtin_prefetch(base + (row + R) * p.row_bytes + (ahead - chunks_bytes(p)), 0, 0);
    }
  }
  if (avail < 4 * R && Simd::kMaskedTail)
    Simd::transpose_head(rows, int(avail), out);
  else
    Simd::transpose(rows, out);
}

using SpanSelect = SpanFn (*)(int, int);

// Rows row0 … row0+R-1 (those < out_features) of every token into s.y[t][r].  `select` picks the
// span function of a (planes, tokens) chunk; it counts `per_byte` units per sign byte (2: the
// float32 nibble tables, span_fn; 1: the bfloat16 byte tables, span_fn_bf16).
inline void lut_rows(const Problem& p, Scratch& s, int64_t row0, SpanSelect select, int per_byte) {
  using S = Simd;
  constexpr int R = S::R;
  const int64_t G = p.groups, T = p.tokens;
  // the block's grids as floats, transposed to [g][r] (rows past the end: 0)
  const int64_t live = std::min<int64_t>(R, p.out_features - row0);
  for (auto [src, dst] : {std::pair{p.step, &s.step}, std::pair{p.offset, &s.offset}}) {
    S::halves(src + row0 * G, live * G, s.row.data());  // the block's rows are contiguous: [r][g]
    S::transpose_grid(s.row.data(), live, G, dst->data());
  }
  // y = bias + Σ_g C[:, g] · X[t, g]
  alignas(64) float bias[R];
  for (int r = 0; r < R; ++r) bias[r] = (p.bias && row0 + r < p.out_features) ? p.bias[row0 + r] : 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    typename S::F v = S::load(bias);
    const float* xg = p.group_x + t * G;
    for (int64_t g = 0; g < G; ++g) v = S::fma(S::load(s.offset.data() + g * R), S::set1(xg[g]), v);
    S::store(s.y.data() + t * R, v);
  }
  const int64_t chunk_bytes = 4 * R, chunks = (p.row_bytes + chunk_bytes - 1) / chunk_bytes;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t byte0 = c * chunk_bytes;
    for (int64_t i = 0; i < p.planes; ++i) load_chunk(p, s, i, row0, byte0);
    const int64_t first = per_byte * byte0;
    const int64_t end = std::min(first + per_byte * chunk_bytes, per_byte == 2 ? p.nibbles : p.row_bytes);
    for (int64_t t0 = 0; t0 < T; t0 += 4) {
      const int pt = int(std::min<int64_t>(4, T - t0));
      for (int64_t j0 = 0; j0 < p.planes; j0 += 4) {
        const int pj = int(std::min<int64_t>(4, p.planes - j0));
        select(pj, pt)(p, s, s.y.data(), first, first, end, int(j0), int(t0));
      }
    }
  }
}

}  // namespace bitstack_native
