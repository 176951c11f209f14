// The element-wise passes of an uncompiled Flipout layer whose noise path multiplies in bfloat16 (ops.flipout_linear,
// which says when it is used): each reads and writes the layer's [rows, features] tensors once, where the
// composition of ATen ops it replaces made three to six passes over them, several through ATen's slower
// mixed-dtype loops.
//
// The layer (Wen et al., "Flipout", ICLR 2018, arXiv:1803.04386, eq. 3), for input rows x_r, r = l * B + b of
// data point b (x [L, B, in] flattened, L = k or 1), mean weights mu, noise weights w = sigma * eps, random signs
// s_b, r_b and bias noise c_b:
//   y_r = x_r mu^T + bias + c_b + ((x_r * s_b) w^T) * r_b
// The four passes around its products, P the products' results (bfloat16, or float32 for a float32 mean path):
//   inputs:       x_r -> bf16(x_r) (for a bfloat16 mean path) and bf16(x_r * s_b)
//   output:       y_r = ((P_mean + bias) + c_b) + P_noise * r_b                     (the composition's order)
//   grad output:  g_r -> bf16(g_r) (bfloat16 mean path), bf16(g_r * r_b), and dc_b = sum_l g_(l B + b)
//   grad input:   dx_r = Q_mean + Q_noise * s_b, Q the input-gradient products
// Each entry is computed by the same operations whatever the thread count (the grad output's sums run over l in
// order, per data point), so no value depends on it.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <tuple>

namespace {

using V = at::vec::Vectorized<float>;
using BF = at::BFloat16;
using VB = at::vec::Vectorized<BF>;
constexpr int64_t kHalf = V::size();  // a bfloat16 vector holds two float vectors: 2 * kHalf entries

// n <= 2 kHalf entries from p as two float vectors (missing entries 0)
inline std::tuple<V, V> load2(const float* p, int64_t n) {
  if (n == 2 * kHalf) return {V::loadu(p), V::loadu(p + kHalf)};
  return {V::loadu(p, std::min(n, kHalf)), n > kHalf ? V::loadu(p + kHalf, n - kHalf) : V(0.f)};
}

inline std::tuple<V, V> load2(const BF* p, int64_t n) {
  return at::vec::convert_bfloat16_float(n == 2 * kHalf ? VB::loadu(p) : VB::loadu(p, n));
}

inline void store2(float* p, V a, V b, int64_t n) {
  if (n == 2 * kHalf) {
    a.store(p);
    b.store(p + kHalf);
  } else {
    a.store(p, static_cast<int>(std::min(n, kHalf)));
    if (n > kHalf) b.store(p + kHalf, static_cast<int>(n - kHalf));
  }
}

inline void store2(BF* p, V a, V b, int64_t n) {
  const VB v = at::vec::convert_float_bfloat16(a, b);  // round to nearest even, as Tensor.to(torch.bfloat16)
  if (n == 2 * kHalf) {
    v.store(p);
  } else {
    v.store(p, static_cast<int>(n));
  }
}

// Rows [R, d] of a contiguous tensor against rows [B, d] of the per-data-point one; R a multiple of B.
struct Shape {
  int64_t rows, points, d;
};

Shape shape_of(const torch::Tensor& rows, const torch::Tensor& per_point, const char* name) {
  TORCH_CHECK(rows.device().is_cpu() && per_point.device().is_cpu() && rows.is_contiguous() &&
                  per_point.is_contiguous() && per_point.scalar_type() == torch::kFloat32,
              name, ": needs contiguous CPU tensors and float32 signs");
  const int64_t d = rows.size(-1);
  TORCH_CHECK(d > 0 && per_point.size(-1) == d && per_point.numel() > 0 && rows.numel() % per_point.numel() == 0,
              name, ": the per-data-point tensor must be [B, ", d, "] for rows [R, ", d, "], R a multiple of B");
  return {rows.numel() / d, per_point.numel() / d, d};
}

void check_float(const torch::Tensor& t, const char* name, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, ": ", what, " must be float32, got ", t.scalar_type());
}

// f(o, p, j, m) for each chunk of up to 2 kHalf entries of every row, the rows split between torch's threads: o the
// chunk's offset in the rows [R, d], p the offset of the same entries of its data point's row [B, d], j = o mod d, m
// its length
template <typename F>
void for_each_chunk(const Shape& n, F f) {
  at::parallel_for(0, n.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = r * n.d, point = (r % n.points) * n.d;
      for (int64_t j = 0; j < n.d; j += 2 * kHalf) f(row + j, point + j, j, std::min(2 * kHalf, n.d - j));
    }
  });
}

// (bf16(x) if mean_low else an empty tensor, bf16(x * s)) for x [R, in], s [B, in]
std::tuple<torch::Tensor, torch::Tensor> flipout_inputs_cpu(const torch::Tensor& x, const torch::Tensor& s,
                                                            bool mean_low) {
  check_float(x, "flipout_inputs_cpu", "x");
  const Shape n = shape_of(x, s, "flipout_inputs_cpu");
  auto xs = torch::empty(x.sizes(), x.options().dtype(torch::kBFloat16));
  auto x_low = mean_low ? torch::empty_like(xs) : torch::empty({0}, xs.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  BF* xsp = xs.data_ptr<BF>();
  BF* xlp = mean_low ? x_low.data_ptr<BF>() : nullptr;
  for_each_chunk(n, [&](int64_t o, int64_t p, int64_t, int64_t m) {
    const auto [x0, x1] = load2(xp + o, m);
    const auto [s0, s1] = load2(sp + p, m);
    store2(xsp + o, x0 * s0, x1 * s1, m);
    if (xlp) store2(xlp + o, x0, x1, m);
  });
  return {x_low, xs};
}

// y = ((mean + bias) + c_b) + noise * r_b: mean [R, out] (float32 or bfloat16), noise [R, out] bfloat16, bias [out],
// c and r [B, out]
template <typename M>
void output_rows(const M* mean, const BF* noise, const float* bias, const float* c, const float* rp, float* y,
                 const Shape& n) {
  for_each_chunk(n, [&](int64_t o, int64_t p, int64_t j, int64_t m) {
    const auto [m0, m1] = load2(mean + o, m);
    const auto [n0, n1] = load2(noise + o, m);
    const auto [b0, b1] = load2(bias + j, m);
    const auto [c0, c1] = load2(c + p, m);
    const auto [r0, r1] = load2(rp + p, m);
    store2(y + o, m0 + b0 + c0 + n0 * r0, m1 + b1 + c1 + n1 * r1, m);
  });
}

torch::Tensor flipout_output_cpu(const torch::Tensor& mean, const torch::Tensor& noise, const torch::Tensor& bias,
                                 const torch::Tensor& c, const torch::Tensor& r) {
  const char* name = "flipout_output_cpu";
  const Shape n = shape_of(noise, r, name);
  TORCH_CHECK(noise.scalar_type() == torch::kBFloat16, name, ": the noise product must be bfloat16");
  TORCH_CHECK(mean.is_contiguous() && mean.sizes() == noise.sizes(), name, ": mean and noise products must match");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == n.d && c.is_contiguous() && c.numel() == n.points * n.d, name,
              ": bias must be [", n.d, "] and the bias noise [", n.points, ", ", n.d, "]");
  check_float(bias, name, "bias");
  check_float(c, name, "the bias noise");
  auto y = torch::empty(noise.sizes(), noise.options().dtype(torch::kFloat32));
  const BF* np = noise.data_ptr<BF>();
  if (mean.scalar_type() == torch::kBFloat16) {
    output_rows(mean.data_ptr<BF>(), np, bias.data_ptr<float>(), c.data_ptr<float>(), r.data_ptr<float>(),
                y.data_ptr<float>(), n);
  } else {
    check_float(mean, name, "the mean product");
    output_rows(mean.data_ptr<float>(), np, bias.data_ptr<float>(), c.data_ptr<float>(), r.data_ptr<float>(),
                y.data_ptr<float>(), n);
  }
  return y;
}

// For the output gradient g [R, out] and signs r [B, out]: (bf16(g) if mean_low else an empty tensor, bf16(g * r_b),
// dc [B, out] = the sum of each data point's rows of g, over l in order)
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> flipout_grad_output_cpu(const torch::Tensor& g,
                                                                                const torch::Tensor& r, bool mean_low) {
  check_float(g, "flipout_grad_output_cpu", "the gradient");
  const Shape n = shape_of(g, r, "flipout_grad_output_cpu");
  auto gr = torch::empty(g.sizes(), g.options().dtype(torch::kBFloat16));
  auto g_low = mean_low ? torch::empty_like(gr) : torch::empty({0}, gr.options());
  auto dc = torch::empty({n.points, n.d}, g.options());
  const float* gp = g.data_ptr<float>();
  const float* rp = r.data_ptr<float>();
  BF* grp = gr.data_ptr<BF>();
  BF* glp = mean_low ? g_low.data_ptr<BF>() : nullptr;
  float* dcp = dc.data_ptr<float>();
  const int64_t copies = n.rows / n.points;
  at::parallel_for(0, n.points, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* rb = rp + b * n.d;
      float* sum = dcp + b * n.d;  // b's rows added in order of l, each streamed whole
      for (int64_t l = 0; l < copies; ++l) {
        const int64_t o = (l * n.points + b) * n.d;
        for (int64_t j = 0; j < n.d; j += 2 * kHalf) {
          const int64_t m = std::min(2 * kHalf, n.d - j);
          const auto [g0, g1] = load2(gp + o + j, m);
          const auto [r0, r1] = load2(rb + j, m);
          store2(grp + o + j, g0 * r0, g1 * r1, m);
          if (glp) store2(glp + o + j, g0, g1, m);
          if (l == 0) {
            store2(sum + j, g0, g1, m);
          } else {
            const auto [a0, a1] = load2(sum + j, m);
            store2(sum + j, a0 + g0, a1 + g1, m);
          }
        }
      }
    }
  });
  return {g_low, gr, dc};
}

// dx = mean + noise * s_b: mean [R, in] (float32 or bfloat16), noise [R, in] bfloat16, s [B, in]
template <typename M>
void grad_input_rows(const M* mean, const BF* noise, const float* sp, float* dx, const Shape& n) {
  for_each_chunk(n, [&](int64_t o, int64_t p, int64_t, int64_t m) {
    const auto [m0, m1] = load2(mean + o, m);
    const auto [n0, n1] = load2(noise + o, m);
    const auto [s0, s1] = load2(sp + p, m);
    store2(dx + o, m0 + n0 * s0, m1 + n1 * s1, m);
  });
}

torch::Tensor flipout_grad_input_cpu(const torch::Tensor& mean, const torch::Tensor& noise, const torch::Tensor& s) {
  const char* name = "flipout_grad_input_cpu";
  const Shape n = shape_of(noise, s, name);
  TORCH_CHECK(noise.scalar_type() == torch::kBFloat16, name, ": the noise product must be bfloat16");
  TORCH_CHECK(mean.is_contiguous() && mean.sizes() == noise.sizes(), name, ": mean and noise products must match");
  auto dx = torch::empty(noise.sizes(), noise.options().dtype(torch::kFloat32));
  if (mean.scalar_type() == torch::kBFloat16) {
    grad_input_rows(mean.data_ptr<BF>(), noise.data_ptr<BF>(), s.data_ptr<float>(), dx.data_ptr<float>(), n);
  } else {
    check_float(mean, name, "the mean product");
    grad_input_rows(mean.data_ptr<float>(), noise.data_ptr<BF>(), s.data_ptr<float>(), dx.data_ptr<float>(), n);
  }
  return dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(iwae_core, m) {
  m.def("flipout_inputs_cpu(Tensor x, Tensor s, bool mean_low) -> (Tensor, Tensor)");
  m.def("flipout_output_cpu(Tensor mean, Tensor noise, Tensor bias, Tensor c, Tensor r) -> Tensor");
  m.def("flipout_grad_output_cpu(Tensor g, Tensor r, bool mean_low) -> (Tensor, Tensor, Tensor)");
  m.def("flipout_grad_input_cpu(Tensor mean, Tensor noise, Tensor s) -> Tensor");
}

TORCH_LIBRARY_IMPL(iwae_core, CPU, m) {
  m.impl("flipout_inputs_cpu", &flipout_inputs_cpu);
  m.impl("flipout_output_cpu", &flipout_output_cpu);
  m.impl("flipout_grad_output_cpu", &flipout_grad_output_cpu);
  m.impl("flipout_grad_input_cpu", &flipout_grad_input_cpu);
}
