// tanh, softplus and the Bernoulli log-likelihood of float32 CPU tensors, vectorised on every torch thread
// (ops.py; docs/benchmarks.md says why).
//
// ATen's CPU tanh and softplus are fast on some CPUs and several times slower on others, because of how they
// reach their transcendental functions (MKL's, or SLEEF's log1p and expm1, 9 ns an entry on one thread of an
// AMD EPYC against under 1 ns for SLEEF's exp and log); on such CPUs they were the largest items of a training
// step outside its matrix products. These two are built from exp and log alone and take the same time everywhere.
//
// tanh, on a = |x| with the sign copied back:
//   a < 0.625:  tanh a = a + a s P(s), s = a^2, P the odd Taylor series of tanh to the a^21 term (the first
//               omitted term is below 2^-26 of the sum for a < 0.625, whose ratio of terms is about (2a / pi)^2);
//   otherwise:  tanh a = 1 - 2 / (exp(2 a) + 1), no cancellation to speak of where tanh a > 0.55, and exactly 1
//               once exp overflows.
//   Against float64 over every positive float32 below 16: at most 1.8 ulp from the correctly rounded result
//   (just above 0.625), against ATen's 0.5 and inductor's (SLEEF's) 1.0. NaN stays NaN; -0 stays -0.
// softplus x = log(1 + e^x) = max(x, 0) + log1p(t), t = exp(-|x|) in (0, 1], with
//   log1p t = t log(u) / (u - 1), u = 1 + t rounded (t itself where u rounds to 1): the rounding of u cancels
//   between log(u) and u - 1 (D. Goldberg, "What every computer scientist should know about floating-point
//   arithmetic", ACM Computing Surveys 23(1), 1991, Theorem 4). Against float64 over every 7th float32 of either
//   sign with magnitude in [1e-30, 100): at most 2.4 ulp, against ATen's 1.5. tests/test_ops.py samples the same.
// Both evaluate every lane's branches and keep the lane's own; a thread's last few entries go through the same
// vector code, so that no value depends on the thread count.
//
// The Bernoulli log-likelihood sum_d log sigmoid(y_d), y = l (2 x - 1) for binary x, and its gradient in the
// logits, (x - sigmoid(l)) g, each in one pass over a row of logits (ops._BernoulliLogProb, which says why the
// form): log sigmoid(y) = min(y, 0) + log sigmoid(|y|), |y| capped at 80, and the second term summed as the logs of
// products of 16 sigmoids of one lane (each in [0.5, 1], the product >= 2^-16), a sixteenth of the logs.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace {

using V = at::vec::Vectorized<float>;

// tanh a = sum_n T_n a^(2n+1); T_n = 2^(2n+2) (2^(2n+2) - 1) B_(2n+2) / (2n+2)!, B the Bernoulli numbers
constexpr float kTaylor[] = {1.f, -1.f / 3, 2.f / 15, -17.f / 315, 62.f / 2835, -1382.f / 155925,
                             21844.f / 6081075, -929569.f / 638512875, 6404582.f / 10854718875.f,
                             -443861162.f / 1856156927625.f, 18888466084.f / 194896477400625.f};
constexpr int kTerms = sizeof(kTaylor) / sizeof(kTaylor[0]);
constexpr float kSeriesBelow = 0.625f;

inline V tanh_vec(V x) {
  const V sign_bit(-0.f);
  const V a = x.abs();
  const V s = a * a;
  V p(kTaylor[kTerms - 1]);
  for (int n = kTerms - 2; n >= 1; --n) p = at::vec::fmadd(p, s, V(kTaylor[n]));
  const V series = at::vec::fmadd(p * s, a, a);
  // exp_u20: ATen's fast vectorised exp; the whole stays within the 1.8 ulp above
  const V tail = V(1.f) - V(2.f) / ((a + a).exp_u20() + V(1.f));
  const V r = V::blendv(tail, series, a < V(kSeriesBelow)) | (x & sign_bit);
  return V::blendv(r, x, x.isnan());  // exp_u20 does not keep a NaN
}

inline V softplus_vec(V x) {
  const V one(1.f);
  const V t = (V(0.f) - x.abs()).exp();
  const V u = t + one;
  const V log1p_t = V::blendv(t * (u.log() / (u - one)), t, u == one);
  const V r = at::vec::maximum(x, V(0.f)) + log1p_t;
  return V::blendv(r, x, x.isnan());
}

// out = f(x) for a float32 CPU tensor x, entry by entry, on torch's threads
template <typename F>
torch::Tensor map(const torch::Tensor& x, const char* name, F f) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32, name, ": needs a float32 CPU tensor, got ",
              x.scalar_type(), " on ", x.device());
  const auto in = x.contiguous();
  auto out = torch::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // 16,384 entries (a few microseconds) is the least worth handing to another thread
  at::parallel_for(0, in.numel(), 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + V::size() <= end; i += V::size()) f(V::loadu(src + i)).store(dst + i);
    if (i < end) f(V::loadu(src + i, end - i)).store(dst + i, static_cast<int>(end - i));
  });
  return out;
}

// sigmoid(v), v capped at +-80 (exp stays finite; sigmoid(-80) = 1.8e-35 stands for smaller values)
inline V sigmoid_capped(V v) {
  return V(1.f) / (V(1.f) + (V(0.f) - at::vec::clamp(v, V(-80.f), V(80.f))).exp_u20());
}

// Rows of logits [R, D] against rows of x [Rx, D], R a multiple of Rx: logits row r is x row r mod Rx (x
// broadcast over the logits' leading axes, as x [batch, D] against logits [k, batch, D]).
struct Rows {
  const float* x;
  const float* logits;
  int64_t rows, x_rows, d;
};

Rows rows_of(const torch::Tensor& x, const torch::Tensor& logits, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && logits.device().is_cpu() && x.scalar_type() == torch::kFloat32 &&
                  logits.scalar_type() == torch::kFloat32 && x.is_contiguous() && logits.is_contiguous(),
              name, ": needs contiguous float32 CPU tensors");
  const int64_t d = logits.size(-1);
  TORCH_CHECK(d > 0 && x.dim() >= 1 && x.size(-1) == d && logits.numel() % x.numel() == 0, name,
              ": x must be the logits' last axes");
  return {x.data_ptr<float>(), logits.data_ptr<float>(), logits.numel() / d, x.numel() / d, d};
}

torch::Tensor bernoulli_log_prob_cpu(const torch::Tensor& x, const torch::Tensor& logits) {
  const Rows in = rows_of(x, logits, "bernoulli_log_prob_cpu");
  auto out = torch::empty(logits.sizes().slice(0, logits.dim() - 1), logits.options());
  float* dst = out.data_ptr<float>();
  const int64_t d = in.d, n = V::size();
  at::parallel_for(0, in.rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* l = in.logits + r * d;
      const float* xr = in.x + (r % in.x_rows) * d;
      V below(0.f), logs(0.f), product(1.f);
      int factors = 0;
      for (int64_t j = 0; j < d; j += n) {
        const int64_t m = std::min(n, d - j);
        const V xv = V::loadu(xr + j, m);
        const V y = V::loadu(l + j, m) * (xv + xv - V(1.f));  // padded lanes: y = 0, min(y, 0) = 0
        below = below + at::vec::minimum(y, V(0.f));
        product = product * V::set(V(1.f), sigmoid_capped(y.abs()), m);  // padded lanes multiply by 1
        if (++factors == 16) {
          logs = logs + product.log();
          product = V(1.f);
          factors = 0;
        }
      }
      alignas(64) float lanes[V::size()];
      (below + logs + product.log()).store(lanes);
      float sum = 0.f;
      for (int64_t i = 0; i < n; ++i) sum += lanes[i];
      dst[r] = sum;
    }
  });
  return out;
}

// d/dlogits of sum_r g_r log p(x_r | logits_r): (x - sigmoid(l)) g_r, [R, D] like the logits
torch::Tensor bernoulli_grad_logits_cpu(const torch::Tensor& x, const torch::Tensor& logits, const torch::Tensor& g) {
  const Rows in = rows_of(x, logits, "bernoulli_grad_logits_cpu");
  TORCH_CHECK(g.scalar_type() == torch::kFloat32 && g.is_contiguous() && g.numel() == in.rows,
              "bernoulli_grad_logits_cpu: g must hold one float32 per row of logits");
  auto out = torch::empty_like(logits);
  float* dst = out.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const int64_t d = in.d, n = V::size();
  at::parallel_for(0, in.rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* l = in.logits + r * d;
      const float* xr = in.x + (r % in.x_rows) * d;
      const V gr(gp[r]);
      for (int64_t j = 0; j < d; j += n) {
        const int64_t m = std::min(n, d - j);
        const V p = sigmoid_capped(V::loadu(l + j, m));
        ((V::loadu(xr + j, m) - p) * gr).store(dst + r * d + j, static_cast<int>(m));
      }
    }
  });
  return out;
}

torch::Tensor tanh_cpu(const torch::Tensor& x) { return map(x, "tanh_cpu", tanh_vec); }

torch::Tensor softplus_cpu(const torch::Tensor& x) { return map(x, "softplus_cpu", softplus_vec); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(iwae_core, m) {
  m.def("tanh_cpu(Tensor x) -> Tensor");
  m.def("softplus_cpu(Tensor x) -> Tensor");
  m.def("bernoulli_log_prob_cpu(Tensor x, Tensor logits) -> Tensor");
  m.def("bernoulli_grad_logits_cpu(Tensor x, Tensor logits, Tensor g) -> Tensor");
}

TORCH_LIBRARY_IMPL(iwae_core, CPU, m) {
  m.impl("tanh_cpu", &tanh_cpu);
  m.impl("softplus_cpu", &softplus_cpu);
  m.impl("bernoulli_log_prob_cpu", &bernoulli_log_prob_cpu);
  m.impl("bernoulli_grad_logits_cpu", &bernoulli_grad_logits_cpu);
}
