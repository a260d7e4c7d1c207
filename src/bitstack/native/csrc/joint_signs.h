// Joint signs of the planes codec, one block of columns (bitstack/codecs/planes/signs.py,
// "Joint signs"; reference: joint_block_reference there, same signature).
//
// Every row is independent: its J GPTQ states for the block's b columns sit in a local buffer,
// each column's 2^J codes are scored over the code tree, the best code's error is spread onto
// the block's later columns.  The arithmetic is the reference's, operation by operation, in the
// same order (no contraction: the library is built with -ffp-contract=off), so the results are
// equal bit for bit.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace bitstack_native {

// w: (R, J, b) states; centre, step: (R, b); u: (P, b, b) factor block; owner: (R,) in [0, P);
// lam: (J,); coefficient: (J, 2^J).  Writes errors (R, J, b) and best (R, b).  Rows [r0, r1).
inline void joint_block_rows(const float* w, const float* centre, const float* step, const float* u,
                             const int64_t* owner, const float* lam, const float* coefficient,
                             int64_t J, int64_t b, float* errors, int64_t* best, int64_t r0, int64_t r1) {
  const int64_t codes = int64_t(1) << J;
  // node values of level j: coefficient[j, n << (J - 1 - j)], n < 2^(j+1)
  std::vector<float> nodes;
  std::vector<int64_t> node_start(J + 1, 0);
  for (int64_t j = 0; j < J; ++j) {
    node_start[j + 1] = node_start[j] + (int64_t(2) << j);
    for (int64_t n = 0; n < (int64_t(2) << j); ++n) nodes.push_back(coefficient[j * codes + (n << (J - 1 - j))]);
  }
  std::vector<float> state(J * b), cost(codes), next(codes), values(codes), err(J);
  for (int64_t r = r0; r < r1; ++r) {
    const float* ur = u + owner[r] * b * b;
    std::copy(w + r * J * b, w + (r + 1) * J * b, state.begin());
    for (int64_t i = 0; i < b; ++i) {
      const float c = centre[r * b + i], s = step[r * b + i];
      for (int64_t j = 0; j < J; ++j) {
        const int64_t count = int64_t(2) << j;
        const float* node = nodes.data() + node_start[j];
        const float x = state[j * b + i], weight = lam[j];
        for (int64_t n = 0; n < count; ++n) {
          const float scaled = s * node[n];
          const float value = c + scaled;
          const float diff = x - value;
          const float sq = diff * diff;
          const float term = weight * sq;
          next[n] = j == 0 ? term : cost[n >> 1] + term;
        }
        std::swap(cost, next);
      }
      int64_t k = 0;
      float low = cost[0];
      for (int64_t n = 1; n < codes; ++n) {
        if (cost[n] < low) {
          low = cost[n];
          k = n;
        }
      }
      best[r * b + i] = k;
      const float diag = ur[i * b + i];
      for (int64_t j = 0; j < J; ++j) {
        const float scaled = s * coefficient[j * codes + k];
        const float chosen = c + scaled;
        const float e = (state[j * b + i] - chosen) / diag;
        err[j] = e;
        errors[(r * J + j) * b + i] = e;
      }
      for (int64_t j = 0; j < J; ++j) {
        float* row = state.data() + j * b;
        const float e = err[j];
        const float* urow = ur + i * b;
        for (int64_t t = i + 1; t < b; ++t) {
          const float product = e * urow[t];
          row[t] = row[t] - product;
        }
      }
    }
  }
}

}  // namespace bitstack_native
