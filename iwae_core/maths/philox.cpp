// Standard normal draws from Philox4x32-10 on CPU, spread over torch's threads (rng.py says why and what).
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

namespace {

constexpr int kBlocks = 64;  // counters per inner batch: 256 normals, arrays that stay in L1

// The ten rounds for kBlocks consecutive counters, word-major (out[j * kBlocks + i] is word j of counter
// first + i) so that the compiler vectorises each round across the counters.
void philox_words(uint32_t k0, uint32_t k1, uint64_t first, uint32_t* out) {
  uint32_t c0[kBlocks], c1[kBlocks], c2[kBlocks], c3[kBlocks];
  for (int i = 0; i < kBlocks; ++i) {
    const uint64_t c = first + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(c);
    c1[i] = static_cast<uint32_t>(c >> 32);
    c2[i] = 0;
    c3[i] = 0;
  }
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
  for (int i = 0; i < kBlocks; ++i) {
    out[i] = c0[i];
    out[kBlocks + i] = c1[i];
    out[2 * kBlocks + i] = c2[i];
    out[3 * kBlocks + i] = c3[i];
  }
}

}  // namespace

// Words of blocks 0..n-1 under `key`, [n, 4] int32 (the uint32 bits): what the tests check against the
// published known answers and against rng.py's torch implementation.
torch::Tensor words(int64_t key, int64_t n) {
  auto out = torch::empty({(n + kBlocks - 1) / kBlocks * kBlocks, 4}, torch::kInt32);
  auto* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  alignas(64) uint32_t w[4 * kBlocks];
  for (int64_t b = 0; b < out.size(0); b += kBlocks) {
    philox_words(static_cast<uint32_t>(key), static_cast<uint32_t>(static_cast<uint64_t>(key) >> 32), b, w);
    for (int i = 0; i < kBlocks; ++i)
      for (int j = 0; j < 4; ++j) o[(b + i) * 4 + j] = w[j * kBlocks + i];
  }
  return out.narrow(0, 0, n);
}

// Fills a contiguous float32 tensor with standard normals (the header's layout).
void normal_(torch::Tensor out, int64_t key) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == torch::kFloat32 && out.is_contiguous(),
              "philox normal_: needs a contiguous float32 CPU tensor");
  float* p = out.data_ptr<float>();
  const int64_t n = out.numel();
  const int64_t per_batch = 4 * kBlocks;
  const int64_t batches = (n + per_batch - 1) / per_batch;
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(static_cast<uint64_t>(key) >> 32);
  // 64 batches (16,384 normals, about 15 us) is the least worth handing to a second thread
  at::parallel_for(0, batches, 64, [&](int64_t begin, int64_t end) {
    using V = at::vec::Vectorized<float>;
    alignas(64) uint32_t w[4 * kBlocks];
    alignas(64) float u[4 * kBlocks];
    alignas(64) float z[4 * kBlocks];
    const V minus_two(-2.f), two_pi(6.2831853071795864f);
    for (int64_t batch = begin; batch < end; ++batch) {
      philox_words(k0, k1, static_cast<uint64_t>(batch) * kBlocks, w);
      // u1 from words 0 and 2, u2 from words 1 and 3; pair q of counter i is word-major row 2q (u1), 2q+1 (u2)
      for (int i = 0; i < 4 * kBlocks; ++i) {
        const bool first_of_pair = (i / kBlocks) % 2 == 0;
        u[i] = (static_cast<float>(w[i] >> 8) + (first_of_pair ? 1.f : 0.f)) * 5.9604644775390625e-08f;
      }
      for (int q = 0; q < 2; ++q) {
        const float* u1 = u + 2 * q * kBlocks;
        const float* u2 = u1 + kBlocks;
        float* zc = z + 2 * q * kBlocks;  // cos half, then sin half
        for (int i = 0; i < kBlocks; i += V::size()) {
          const V r = (minus_two * V::loadu(u1 + i).log()).sqrt();
          const V theta = two_pi * V::loadu(u2 + i);
          (r * theta.cos()).store(zc + i);
          (r * theta.sin()).store(zc + kBlocks + i);
        }
      }
      // entry 4i + 2q + s of the output is z[(2q + s) * kBlocks + i]
      const int64_t start = batch * per_batch;
      const int64_t m = std::min<int64_t>(per_batch, n - start);
      float* dst = p + start;
      if (m == per_batch) {
        for (int i = 0; i < kBlocks; ++i)
          for (int j = 0; j < 4; ++j) dst[4 * i + j] = z[j * kBlocks + i];
      } else {
        for (int64_t e = 0; e < m; ++e) dst[e] = z[(e % 4) * kBlocks + e / 4];
      }
    }
  });
}

// Fills a contiguous float32 tensor with random signs +-1: entry e is 1 - 2 b, b bit e % 32 of word (e / 32) % 4 of
// counter e / 128, so 128 signs per counter.
void signs_(torch::Tensor out, int64_t key) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == torch::kFloat32 && out.is_contiguous(),
              "philox signs_: needs a contiguous float32 CPU tensor");
  float* p = out.data_ptr<float>();
  const int64_t n = out.numel();
  const int64_t per_batch = 128 * kBlocks;
  const int64_t batches = (n + per_batch - 1) / per_batch;
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(static_cast<uint64_t>(key) >> 32);
  at::parallel_for(0, batches, 4, [&](int64_t begin, int64_t end) {
    alignas(64) uint32_t w[4 * kBlocks];
    for (int64_t batch = begin; batch < end; ++batch) {
      philox_words(k0, k1, static_cast<uint64_t>(batch) * kBlocks, w);
      const int64_t start = batch * per_batch;
      const int64_t m = std::min<int64_t>(per_batch, n - start);
      for (int64_t e = 0; e < m; ++e) {
        const uint32_t word = w[((e / 32) % 4) * kBlocks + e / 128];
        p[start + e] = 1.f - 2.f * static_cast<float>((word >> (e % 32)) & 1u);
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("signs_", &signs_, "fill a float32 tensor with random signs from Philox4x32-10 under a key");
  m.def("words", &words, "Philox4x32-10 words of blocks 0..n-1 under a key, [n, 4] int32");
  m.def("normal_", &normal_, "fill a float32 tensor with standard normals from Philox4x32-10 under a key");
}
