// PyTorch custom ops of the planes CPU kernels (namespace "bitstack"):
//
//   planes_lut_linear(Tensor x, Tensor[] signs, Tensor offset, Tensor step, int group_size,
//                     Tensor? bias=None) -> Tensor
//       y = x · Ŵᵀ (+ bias) without forming Ŵ (planes_lut.h).  x float32 / bfloat16 / float16
//       (..., K); signs J >= 1 uint8 (N, ceil(K/8)) in the stored layout (bit j of byte c is
//       column 8c + j, 1 = +1); offset, step float16 (N, ceil(K / group_size)); group_size a
//       multiple of 4; bias (N,) of any float dtype.  Returns (..., N) in x's dtype, computed
//       in float32.
//   planes_dense(Tensor[] signs, Tensor offset, Tensor step, int in_features, int group_size,
//                ScalarType dtype) -> Tensor
//       Ŵ (N, in_features) accumulated in float32 in block order (the same operations as
//       bitstack's planes_reconstruct, so bit for bit equal to it), returned as ``dtype``.
//   native_isa() -> str      the vector back-end compiled in: "avx512", "avx2" or "scalar".
//
// Rows are split over torch's intra-op threads (at::parallel_for, torch.get_num_threads()).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "joint_signs.h"
#include "planes_dense.h"
#include "planes_lut.h"
#include "planes_lut_bf16.h"

namespace bitstack_native {
namespace {

// Below this much work in all (sign bytes x planes x tokens per row block, summed over blocks:
// about 1 ns each on one core), one thread: waking the others costs more than it saves.
constexpr int64_t kSerialWork = 8192;
// The rebuild: below this many weight-planes, one thread.
constexpr int64_t kSerialRebuild = 262144;

void check_planes(const std::vector<at::Tensor>& signs, const at::Tensor& offset, const at::Tensor& step,
                  int64_t in_features, int64_t group_size) {
  TORCH_CHECK(!signs.empty(), "planes kernels need at least one sign plane");
  TORCH_CHECK(group_size > 0, "group_size must be positive, got ", group_size);
  const int64_t n = offset.size(0), groups = (in_features + group_size - 1) / group_size;
  for (const auto& s : signs) {
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kByte && s.dim() == 2 && s.is_contiguous(),
                "sign planes must be contiguous uint8 CPU tensors (N, ceil(K/8))");
    TORCH_CHECK(s.size(0) == n && s.size(1) == (in_features + 7) / 8, "a sign plane of shape ", s.sizes(),
                " does not fit a weight of ", n, " rows and ", in_features, " columns");
  }
  for (const auto* t : {&offset, &step}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kHalf && t->dim() == 2 && t->is_contiguous(),
                "offset and step must be contiguous float16 CPU tensors (N, G)");
    TORCH_CHECK(t->size(0) == n && t->size(1) == groups, "offset/step of shape ", t->sizes(), " do not fit ", n,
                " rows and ", groups, " groups of ", group_size);
  }
}

std::vector<const uint8_t*> plane_pointers(const std::vector<at::Tensor>& signs) {
  std::vector<const uint8_t*> out;
  for (const auto& s : signs) out.push_back(s.data_ptr<uint8_t>());
  return out;
}

// x (T, K) of any float dtype -> zero-padded float rows (T, padded)
template <typename scalar_t>
void widen(const at::Tensor& x, int64_t padded, std::vector<float>& out) {
  const int64_t T = x.size(0), K = x.size(1);
  const scalar_t* src = x.data_ptr<scalar_t>();
  out.assign(size_t(T * padded), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) out[size_t(t * padded + k)] = float(src[t * K + k]);
}

// X[t][g] = Σ_{k∈g} x[t, k]; xf rows are `padded` long (zeros after K)
void group_sums(const std::vector<float>& xf, int64_t T, int64_t padded, int64_t groups, int64_t group_size,
                std::vector<float>& group_x) {
  group_x.assign(size_t(T * groups), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xs = xf.data() + t * padded;
      float sum = 0.0f;
      for (int64_t k = g * group_size, end = std::min(padded, (g + 1) * group_size); k < end; ++k) sum += xs[k];
      group_x[size_t(t * groups + g)] = sum;
    }
}

// float32 nibble tables: tab[t][q][b] = Σ_j (bit j of b ? 1 : -1) · x[t, 4q + j]
void nibble_tables(const std::vector<float>& xf, int64_t T, int64_t padded, int64_t nibbles, std::vector<float>& tables) {
  tables.resize(size_t(T * nibbles * 16));
  at::parallel_for(0, T * nibbles, 8192, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      Simd::table16(xf.data() + (i / nibbles) * padded + 4 * (i % nibbles), tables.data() + i * 16);
  });
}

template <typename scalar_t>
void store_rows(const std::vector<float>& y, int64_t T, int64_t N, int64_t row0, scalar_t* out) {
  constexpr int R = Simd::R;
  const int64_t rows = std::min<int64_t>(R, N - row0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < rows; ++r) out[t * N + row0 + r] = scalar_t(y[size_t(t * R + r)]);
}

at::Tensor planes_lut_linear(const at::Tensor& x, const std::vector<at::Tensor>& signs, const at::Tensor& offset,
                             const at::Tensor& step, int64_t group_size, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1, "planes_lut_linear expects a CPU tensor x (..., K)");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "planes_lut_linear expects x in float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(group_size > 0 && group_size % 4 == 0, "planes_lut_linear needs a group size that is a multiple of 4, got ",
              group_size);
  const int64_t K = x.size(-1);
  check_planes(signs, offset, step, K, group_size);
  const int64_t N = offset.size(0), J = int64_t(signs.size());
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t T = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  if (T == 0 || N == 0) return out;
  at::Tensor b32;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must have shape (", N, "), got ", bias->sizes());
    b32 = bias->to(at::kFloat).contiguous();
  }

  Problem p{};
  p.tokens = T, p.in_features = K, p.out_features = N, p.planes = J, p.group_size = group_size;
  p.groups = offset.size(1), p.row_bytes = (K + 7) / 8, p.nibbles = (K + 3) / 4;
  thread_local std::vector<float> xf, tables, group_x;  // reused by the next call of this thread
  thread_local std::vector<uint16_t> tables_bf16;
  const int64_t padded = 8 * p.row_bytes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "planes_lut_linear_widen",
                                  [&] { widen<scalar_t>(x2, padded, xf); });
  group_sums(xf, T, padded, p.groups, group_size, group_x);
  SpanSelect select = &span_fn;
  int per_byte = 2;
#ifdef BITSTACK_BF16_TABLES
  if (dtype == at::kBFloat16 && group_size % 8 == 0) {  // bfloat16 activations: the byte tables
    tables_bf16.resize(size_t(T * p.row_bytes * 32));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < p.row_bytes; ++b)
        table32_bf16(xf.data() + t * padded + 8 * b, tables_bf16.data() + (t * p.row_bytes + b) * 32);
    select = &span_fn_bf16, per_byte = 1;
  }
#endif
  if (per_byte == 2) nibble_tables(xf, T, padded, p.nibbles, tables);
  const std::vector<const uint8_t*> planes = plane_pointers(signs);
  p.tables = tables.data(), p.tables_bf16 = tables_bf16.data(), p.group_x = group_x.data(), p.signs = planes.data();
  p.offset = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  p.step = reinterpret_cast<const uint16_t*>(step.data_ptr<at::Half>());
  p.bias = b32.defined() ? b32.data_ptr<float>() : nullptr;

  constexpr int R = Simd::R;
  const int64_t blocks = (N + R - 1) / R;
  const int64_t per_block = std::max<int64_t>(1, p.row_bytes * J * T);
  const int64_t grain = std::max<int64_t>(1, kSerialWork / per_block);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "planes_lut_linear", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      thread_local Scratch s;
      s.fit(p);
      for (int64_t b = begin; b < end; ++b) {
        lut_rows(p, s, b * R, select, per_byte);
        store_rows<scalar_t>(s.y, T, N, b * R, dst);
      }
    });
  });
  return out;
}

at::Tensor planes_dense(const std::vector<at::Tensor>& signs, const at::Tensor& offset, const at::Tensor& step,
                        int64_t in_features, int64_t group_size, at::ScalarType dtype) {
  TORCH_CHECK(in_features > 0, "in_features must be positive, got ", in_features);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "planes_dense builds float32, bfloat16 or float16, got ", dtype);
  check_planes(signs, offset, step, in_features, group_size);
  const int64_t N = offset.size(0), J = int64_t(signs.size()), G = offset.size(1), K = in_features;
  at::Tensor out = at::empty({N, K}, offset.options().dtype(dtype));
  const std::vector<const uint8_t*> planes = plane_pointers(signs);
  const auto* c = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  const auto* st = reinterpret_cast<const uint16_t*>(step.data_ptr<at::Half>());
  const int64_t grain = std::max<int64_t>(1, kSerialRebuild / std::max<int64_t>(1, K * J));
  const int64_t row_bytes = (K + 7) / 8;
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(K), 0.0f);
    for (int64_t n = begin; n < end; ++n) {
      if (dtype == at::kFloat) {
        dense_row(planes.data(), J, n, K, row_bytes, c, st, G, group_size, out.data_ptr<float>() + n * K, row.data());
      } else if (dtype == at::kBFloat16) {
        dense_row(planes.data(), J, n, K, row_bytes, c, st, G, group_size, out.data_ptr<at::BFloat16>() + n * K,
                  row.data());
      } else {
        dense_row(planes.data(), J, n, K, row_bytes, c, st, G, group_size, row.data(), row.data());
        store_half(row.data(), K, out.data_ptr<at::Half>() + n * K);
      }
    }
  });
  return out;
}

std::string native_isa() { return BITSTACK_SIMD_NAME; }

std::tuple<at::Tensor, at::Tensor> joint_signs_block(const at::Tensor& w, const at::Tensor& centre, const at::Tensor& step,
                                                     const at::Tensor& u, const at::Tensor& owner, const at::Tensor& lam,
                                                     const at::Tensor& coefficient) {
  TORCH_CHECK(w.dim() == 3 && w.scalar_type() == at::kFloat, "joint_signs_block: w must be float32 (R, J, b)");
  const int64_t R = w.size(0), J = w.size(1), b = w.size(2);
  TORCH_CHECK(J >= 1 && J <= 16, "joint_signs_block: 1 to 16 levels");
  for (const at::Tensor* t : {&centre, &step})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == R && t->size(1) == b,
                "joint_signs_block: centre and step must be float32 (R, b)");
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 3 && u.size(1) == b && u.size(2) == b,
              "joint_signs_block: u must be float32 (P, b, b)");
  TORCH_CHECK(owner.scalar_type() == at::kLong && owner.dim() == 1 && owner.size(0) == R,
              "joint_signs_block: owner must be int64 (R,)");
  TORCH_CHECK(lam.scalar_type() == at::kFloat && lam.numel() == J, "joint_signs_block: lam must be float32 (J,)");
  TORCH_CHECK(coefficient.scalar_type() == at::kFloat && coefficient.dim() == 2 && coefficient.size(0) == J &&
                  coefficient.size(1) == (int64_t(1) << J),
              "joint_signs_block: coefficient must be float32 (J, 2^J)");
  const at::Tensor wc = w.contiguous(), cc = centre.contiguous(), sc = step.contiguous(), uc = u.contiguous(),
                   oc = owner.contiguous(), lc = lam.contiguous(), kc = coefficient.contiguous();
  const int64_t P = uc.size(0);
  const int64_t* own = oc.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(own[r] >= 0 && own[r] < P, "joint_signs_block: owner out of range");
  at::Tensor errors = at::empty({R, J, b}, w.options());
  at::Tensor best = at::empty({R, b}, owner.options());
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    joint_block_rows(wc.data_ptr<float>(), cc.data_ptr<float>(), sc.data_ptr<float>(), uc.data_ptr<float>(), own,
                     lc.data_ptr<float>(), kc.data_ptr<float>(), J, b, errors.data_ptr<float>(),
                     best.data_ptr<int64_t>(), begin, end);
  });
  return {errors, best};
}

}  // namespace
}  // namespace bitstack_native

TORCH_LIBRARY_FRAGMENT(bitstack, m) {
  m.def("planes_lut_linear(Tensor x, Tensor[] signs, Tensor offset, Tensor step, int group_size, Tensor? bias=None) -> Tensor");
  m.def("planes_dense(Tensor[] signs, Tensor offset, Tensor step, int in_features, int group_size, ScalarType dtype) -> Tensor");
  m.def("native_isa() -> str", &bitstack_native::native_isa);
  m.def("joint_signs_block(Tensor w, Tensor centre, Tensor step, Tensor u, Tensor owner, Tensor lam, Tensor coefficient) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bitstack, CPU, m) {
  m.impl("planes_lut_linear", &bitstack_native::planes_lut_linear);
  m.impl("planes_dense", &bitstack_native::planes_dense);
  m.impl("joint_signs_block", &bitstack_native::joint_signs_block);
}
