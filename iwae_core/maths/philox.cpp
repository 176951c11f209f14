// Standard normals and random signs from Philox4x32-10 on CPU, spread over torch's threads (rng.py says why).
//
// Philox4x32-10: J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC11 (2011). Counter c = (i mod 2^32, i / 2^32, 0, 0) for block i, key (key mod 2^32, key / 2^32);
// each block gives four 32-bit words w0..w3, and the output's entries 4i..4i+3 are two Box-Muller pairs:
//   u1 = ((w0 >> 8) + 1) 2^-24 in (0, 1],  u2 = (w1 >> 8) 2^-24 in [0, 1),
//   z[4i] = sqrt(-2 ln u1) cos(2 pi u2),  z[4i+1] = sqrt(-2 ln u1) sin(2 pi u2),  and (w2, w3) for z[4i+2..3].
// The torch implementation in rng.py computes the same numbers; every entry depends on its index alone, so
// the output does not depend on the thread count or on how the blocks are split.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kBlocks = 64;  // counters per inner batch: 256 normals, arrays that stay in L1

// Counters first .. first + kBlocks - 1 as Philox's four counter words, word-major.
void counters(uint64_t first, uint32_t* c0, uint32_t* c1, uint32_t* c2, uint32_t* c3) {
  for (int i = 0; i < kBlocks; ++i) {
    const uint64_t c = first + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(c);
    c1[i] = static_cast<uint32_t>(c >> 32);
    c2[i] = 0;
    c3[i] = 0;
  }
}

#if defined(__AVX512F__)
// The high and low 32 bits of m * a in each of 16 lanes. _mm512_mul_epu32 multiplies the even lanes into 64-bit
// products; the odd lanes go through it shifted down. (Compilers vectorise the portable loop below with 64-bit
// multiplies, vpmullq, several times slower.)
inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#endif

// The ten rounds for kBlocks consecutive counters, word-major (out[j * kBlocks + i] is word j of counter
// first + i).
void philox_words(uint32_t k0, uint32_t k1, uint64_t first, uint32_t* out) {
  uint32_t* c0 = out;
  uint32_t* c1 = out + kBlocks;
  uint32_t* c2 = out + 2 * kBlocks;
  uint32_t* c3 = out + 3 * kBlocks;
  counters(first, c0, c1, c2, c3);
#if defined(__AVX512F__)
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int i = 0; i < kBlocks; i += 16) {
    __m512i x0 = _mm512_loadu_si512(c0 + i), x1 = _mm512_loadu_si512(c1 + i);
    __m512i x2 = _mm512_loadu_si512(c2 + i), x3 = _mm512_loadu_si512(c3 + i);
    uint32_t a = k0, b = k1;
    for (int round = 0; round < 10; ++round) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo(x0, m0, hi0, lo0);
      mulhilo(x2, m1, hi1, lo1);
      // 0x96: the three-way exclusive or
      x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32(static_cast<int>(a)), 0x96);
      x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32(static_cast<int>(b)), 0x96);
      x1 = lo1;
      x3 = lo0;
      a += 0x9E3779B9u;  // the key schedule's Weyl constants
      b += 0xBB67AE85u;
    }
    _mm512_storeu_si512(c0 + i, x0);
    _mm512_storeu_si512(c1 + i, x1);
    _mm512_storeu_si512(c2 + i, x2);
    _mm512_storeu_si512(c3 + i, x3);
  }
#else
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < kBlocks; ++i) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0[i];
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2[i];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[i] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[i] ^ k1;
      c1[i] = static_cast<uint32_t>(p1);
      c3[i] = static_cast<uint32_t>(p0);
      c0[i] = n0;
      c2[i] = n2;
    }
    k0 += 0x9E3779B9u;  // the key schedule's Weyl constants
    k1 += 0xBB67AE85u;
  }
#endif
}

// Philox's two 32-bit key words of a 64-bit key.
struct KeyWords {
  uint32_t k0, k1;
  explicit KeyWords(int64_t key)
      : k0(static_cast<uint32_t>(key)), k1(static_cast<uint32_t>(static_cast<uint64_t>(key) >> 32)) {}
};

// The data of a tensor a draw fills, which must be contiguous float32 on the CPU.
float* output_data(torch::Tensor& out, const char* draw) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == torch::kFloat32 && out.is_contiguous(), "philox ", draw,
              ": needs a contiguous float32 CPU tensor");
  return out.data_ptr<float>();
}

// dst[e] = z[(e % 4) * kBlocks + e / 4] for the first m entries: the four word-major rows of z back in counter
// order (entry 4 i + j is row j, column i), for the words themselves, a draw's last part batch, and CPUs without
// AVX-512.
template <typename T>
inline void interleave_first(const T* z, T* dst, int64_t m) {
  for (int64_t e = 0; e < m; ++e) dst[e] = z[(e % 4) * kBlocks + e / 4];
}

// interleave_first of a whole batch (4 kBlocks entries) of float32.
inline void interleave(const float* z, float* dst) {
#if defined(__AVX512F__)
  // 16 counters at a time: a 4 x 4 transpose within each 128-bit lane (unpack), then one of the lanes
  for (int i = 0; i < kBlocks; i += 16) {
    const __m512 z0 = _mm512_loadu_ps(z + i), z1 = _mm512_loadu_ps(z + kBlocks + i);
    const __m512 z2 = _mm512_loadu_ps(z + 2 * kBlocks + i), z3 = _mm512_loadu_ps(z + 3 * kBlocks + i);
    const __m512 t0 = _mm512_unpacklo_ps(z0, z1), t1 = _mm512_unpackhi_ps(z0, z1);
    const __m512 t2 = _mm512_unpacklo_ps(z2, z3), t3 = _mm512_unpackhi_ps(z2, z3);
    // lane q of u_c holds counter 4 q + c's four entries
    const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u2, u3, 0x44);
    const __m512 v2 = _mm512_shuffle_f32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
    float* d = dst + 4 * i;
    _mm512_storeu_ps(d, _mm512_shuffle_f32x4(v0, v1, 0x88));       // counters i .. i + 3
    _mm512_storeu_ps(d + 16, _mm512_shuffle_f32x4(v0, v1, 0xDD));  // i + 4 .. i + 7
    _mm512_storeu_ps(d + 32, _mm512_shuffle_f32x4(v2, v3, 0x88));
    _mm512_storeu_ps(d + 48, _mm512_shuffle_f32x4(v2, v3, 0xDD));
  }
#else
  interleave_first(z, dst, 4 * kBlocks);
#endif
}

}  // namespace

// Words of blocks 0..n-1 under `key`, [n, 4] int32 (the uint32 bits): what the tests check against the
// published known answers and against rng.py's torch implementation.
torch::Tensor words(int64_t key, int64_t n) {
  auto out = torch::empty({(n + kBlocks - 1) / kBlocks * kBlocks, 4}, torch::kInt32);
  auto* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  alignas(64) uint32_t w[4 * kBlocks];
  const KeyWords k(key);
  for (int64_t b = 0; b < out.size(0); b += kBlocks) {
    philox_words(k.k0, k.k1, b, w);
    interleave_first(w, o + b * 4, 4 * kBlocks);
  }
  return out.narrow(0, 0, n);
}

// Fills a contiguous float32 tensor with standard normals (the header's layout).
void normal_(torch::Tensor out, int64_t key) {
  float* p = output_data(out, "normal_");
  const int64_t n = out.numel(), per_batch = 4 * kBlocks;
  const KeyWords k(key);
  // 64 batches (16,384 normals, about 15 us) is the least worth handing to a second thread
  at::parallel_for(0, (n + per_batch - 1) / per_batch, 64, [&](int64_t begin, int64_t end) {
    using V = at::vec::Vectorized<float>;
    alignas(64) uint32_t w[4 * kBlocks];
    alignas(64) float u[4 * kBlocks];
    alignas(64) float z[4 * kBlocks];
    const V minus_two(-2.f), two_pi(6.2831853071795864f);
    for (int64_t batch = begin; batch < end; ++batch) {
      philox_words(k.k0, k.k1, static_cast<uint64_t>(batch) * kBlocks, w);
      // u1 from words 0 and 2, u2 from words 1 and 3; pair q of counter i is word-major row 2q (u1), 2q+1 (u2)
      for (int row = 0; row < 4; ++row) {
        const float one_if_u1 = row % 2 == 0 ? 1.f : 0.f;
        for (int i = row * kBlocks; i < (row + 1) * kBlocks; ++i)
          u[i] = (static_cast<float>(w[i] >> 8) + one_if_u1) * 5.9604644775390625e-08f;
      }
      for (int q = 0; q < 2; ++q) {
        const float* u1 = u + 2 * q * kBlocks;
        const float* u2 = u1 + kBlocks;
        float* zc = z + 2 * q * kBlocks;  // cos half, then sin half
        for (int i = 0; i < kBlocks; i += V::size()) {
          const V r = (minus_two * V::loadu(u1 + i).log()).sqrt();
          const V theta = two_pi * V::loadu(u2 + i);
          // ATen's vectorised cos and sin (SLEEF, 3.5 ulp) took 0.36 ms per 500,000 on one thread, SLEEF's sincos
          // 0.61 (3.5 ulp) and 0.79 (1 ulp)
          (r * theta.cos()).store(zc + i);
          (r * theta.sin()).store(zc + kBlocks + i);
        }
      }
      // entry 4i + 2q + s of the output is z[(2q + s) * kBlocks + i]
      const int64_t start = batch * per_batch;
      const int64_t m = std::min<int64_t>(per_batch, n - start);
      float* dst = p + start;
      if (m == per_batch) {
        interleave(z, dst);
      } else {
        interleave_first(z, dst, m);
      }
    }
  });
}

// Fills a contiguous float32 tensor with random signs +-1: entry e is 1 - 2 b, b bit e % 32 of word (e / 32) % 4 of
// counter e / 128, so 128 signs per counter.
void signs_(torch::Tensor out, int64_t key) {
  float* p = output_data(out, "signs_");
  const int64_t n = out.numel(), per_batch = 128 * kBlocks;
  const KeyWords k(key);
  at::parallel_for(0, (n + per_batch - 1) / per_batch, 4, [&](int64_t begin, int64_t end) {
    alignas(64) uint32_t w[4 * kBlocks];
    for (int64_t batch = begin; batch < end; ++batch) {
      philox_words(k.k0, k.k1, static_cast<uint64_t>(batch) * kBlocks, w);
      const int64_t start = batch * per_batch;
      const int64_t m = std::min<int64_t>(per_batch, n - start);
      for (int64_t e = 0; e < m; ++e) {
        const uint32_t word = w[((e / 32) % 4) * kBlocks + e / 128];
        p[start + e] = 1.f - 2.f * static_cast<float>((word >> (e % 32)) & 1u);
      }
    }
  });
}

// The op a compiled training step calls (rng.py's _keyed): a new tensor of the draws under key (a 0-d int64
// tensor drawn by torch's generator in the graph), without a trip through Python for each of a step's draws.
torch::Tensor draw(const torch::Tensor& key, c10::IntArrayRef size, c10::string_view kind) {
  auto out = torch::empty(size, torch::kFloat32);
  const int64_t k = key.item<int64_t>();
  if (kind == "normal") {
    normal_(out, k);
  } else {
    TORCH_CHECK(kind == "signs", "philox: kind must be normal or signs");
    signs_(out, k);
  }
  return out;
}

TORCH_LIBRARY_FRAGMENT(iwae_core, m) {
  m.def("philox_cpu(Tensor key, int[] size, str kind) -> Tensor");
}

TORCH_LIBRARY_IMPL(iwae_core, CPU, m) {
  m.impl("philox_cpu", &draw);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("signs_", &signs_, "fill a float32 tensor with random signs from Philox4x32-10 under a key");
  m.def("words", &words, "Philox4x32-10 words of blocks 0..n-1 under a key, [n, 4] int32");
  m.def("normal_", &normal_, "fill a float32 tensor with standard normals from Philox4x32-10 under a key");
}
