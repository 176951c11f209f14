// tanh of a float32 CPU tensor, vectorised on every torch thread (ops.py's tanh; docs/benchmarks.md says why).
//
// ATen's CPU tanh is fast on some CPUs and four to ten times slower on others (its time also depends on the
// values), and on CPUs of the second kind it was the largest item of a compiled training step outside the
// matrix products. This one takes the same time everywhere, on a = |x|, with the sign copied back:
//   a < 0.625:  tanh a = a + a s P(s), s = a^2, P the odd Taylor series of tanh to the a^21 term (the first
//               omitted term is below 2^-26 of the sum for a < 0.625, whose ratio of terms is about (2a / pi)^2);
//   otherwise:  tanh a = 1 - 2 / (exp(2 a) + 1), no cancellation to speak of where tanh a > 0.55, and exactly 1
//               once exp overflows.
// Both are evaluated for every lane and the lane's one chosen. Measured against float64 over every positive float32
// below 16 (tests/test_ops.py samples the same range): at most 1.8 ulp from the correctly rounded result (just above 0.625), against
// ATen's 0.5 and inductor's (SLEEF's) 1.0. NaN stays NaN; -0 stays -0.

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

torch::Tensor tanh_cpu(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32, "tanh_cpu: needs a float32 CPU tensor, got ",
              x.scalar_type(), " on ", x.device());
  const auto in = x.contiguous();
  auto out = torch::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // 16,384 entries (a few microseconds) is the least worth handing to another thread
  at::parallel_for(0, in.numel(), 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + V::size() <= end; i += V::size()) tanh_vec(V::loadu(src + i)).store(dst + i);
    // the last few through the same vector code, so that no entry depends on where a thread's range ends
    if (i < end) tanh_vec(V::loadu(src + i, end - i)).store(dst + i, static_cast<int>(end - i));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(iwae_core, m) {
  m.def("tanh_cpu(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(iwae_core, CPU, m) {
  m.impl("tanh_cpu", &tanh_cpu);
}
