// tanh and softplus of float32 CPU tensors, vectorised on every torch thread (ops.py; docs/benchmarks.md says why).
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

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

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

torch::Tensor tanh_cpu(const torch::Tensor& x) { return map(x, "tanh_cpu", tanh_vec); }

torch::Tensor softplus_cpu(const torch::Tensor& x) { return map(x, "softplus_cpu", softplus_vec); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(iwae_core, m) {
  m.def("tanh_cpu(Tensor x) -> Tensor");
  m.def("softplus_cpu(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(iwae_core, CPU, m) {
  m.impl("tanh_cpu", &tanh_cpu);
  m.impl("softplus_cpu", &softplus_cpu);
}
