"""The noise's normals and signs (iwae_core/maths/rng.py, philox.cpp): Philox4x32-10 against the published known
answers, the C++ and torch implementations against each other, the normals against N(0, 1) (fixed seeds, stated
tolerances), and the properties the training relies on: torch's seed governs them, the thread count does not."""

import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

from iwae_core.compiled import compile_loss
from iwae_core.maths import rng
from support import require_compile

# Random123's kat_vectors, philox4x32 with 10 rounds: counter (4 words), key (2 words) -> output (4 words)
KNOWN_ANSWERS = [
    ([0, 0, 0, 0], (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0),
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]
KEYS = [0, 1, 12345, -1, -(2**63), 2**63 - 1, 0x299F31D0A4093822]


def extension():
    """The built philox.cpp: its absence (no C++ compiler, a failed build) fails in CI and skips elsewhere."""
    if rng.backend().startswith("torch"):
        msg = f"philox.cpp is not built here: {rng.backend()}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return rng._extension


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_torch_philox_gives_the_published_known_answers(counter, key, expected):
    assert rng.philox_words(torch.tensor([counter]), key)[0].tolist() == expected


@pytest.mark.parametrize("key", KEYS)
def test_cpp_philox_words_equal_the_torch_implementation(key):
    n = 1000  # several of philox.cpp's 64-counter batches and a partial one
    i = torch.arange(n)
    counters = torch.stack([i & 0xFFFFFFFF, i >> 32, torch.zeros_like(i), torch.zeros_like(i)], dim=-1)
    words = extension().words(key, n).to(torch.int64) & 0xFFFFFFFF
    assert torch.equal(words, rng.philox_words(counters, rng.split_key(key)))
    if key == 0:
        assert words[0].tolist() == KNOWN_ANSWERS[0][2]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("n", [1, 3, 256, 1003, 3 * 16384 + 5])
def test_cpp_normals_equal_the_torch_implementation(key, n):
    out = torch.empty(n)
    extension().normal_(out, key)
    # the same words; log, sqrt, cos and sin may round differently (vectorised in C++): a few ulps of |z| <= 5.8
    torch.testing.assert_close(out, rng.torch_normal(n, key), rtol=1e-6, atol=1e-6)


def test_normals_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    draws = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        out = torch.empty(200_003)  # 782 batches of 256: split across threads whenever there are several
        extension().normal_(out, 99)
        draws.append(out)
    torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_normals_are_standard_normal():
    torch.manual_seed(0)
    n = 1_000_000
    z = rng.randn(n).double().numpy()
    # Kolmogorov-Smirnov against N(0, 1): a true N(0, 1) sample gives p < 1e-3 one time in a thousand
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # moments within 5 standard errors: mean (s.e. 1/sqrt(n)), variance (sqrt(2/n)), kurtosis E z^4 = 3 (sqrt(96/n))
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96 / n)
    # 24-bit uniforms bound |z| by sqrt(-2 ln 2^-24) = 5.77, as torch's float32 randn is bounded
    assert np.abs(z).max() <= math.sqrt(-2 * math.log(2.0**-24)) + 1e-5


def test_normals_are_uncorrelated_within_and_across_counters():
    torch.manual_seed(1)
    n = 1_000_000
    z = rng.randn(n).double().numpy()
    limit = 5 / math.sqrt(n)  # 5 standard errors of a correlation between independent N(0, 1) entries
    for lag in (1, 2, 3, 4, 5, 256):  # within a Box-Muller pair, across pairs, counters, batches
        assert abs(np.corrcoef(z[:-lag], z[lag:])[0, 1]) < limit, lag
    # a Box-Muller pair shares its radius: its two entries must still be independent, not only uncorrelated,
    # so their squares are uncorrelated too (s.e. of that correlation about 1/sqrt(n/4) per pair)
    pairs = z.reshape(-1, 2)
    assert abs(np.corrcoef(pairs[:, 0] ** 2, pairs[:, 1] ** 2)[0, 1]) < 5 / math.sqrt(n / 2)


def test_torch_seed_governs_the_draws_and_a_call_takes_one_draw_from_its_stream():
    torch.manual_seed(7)
    a = rng.randn(5, 7)
    after = torch.get_rng_state()
    torch.manual_seed(7)
    assert torch.equal(rng.randn(5, 7), a)
    torch.manual_seed(7)
    torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    assert torch.equal(torch.get_rng_state(), after)  # one key, whatever the size
    torch.manual_seed(8)
    assert not torch.equal(rng.randn(5, 7), a)
    assert not torch.equal(rng.randn(5, 7), rng.randn(5, 7))  # each call a new key


def test_randn_takes_shape_device_and_dtype_like_torch_randn():
    z = rng.randn(2, 3, 4)
    assert z.shape == (2, 3, 4) and z.dtype == torch.float32
    assert rng.randn(3, dtype=torch.float64).dtype == torch.float64
    assert rng.randn_like(torch.zeros(4, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert rng.randn(0, 3).shape == (0, 3)
    assert rng.signs(4, 5, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("n", [1, 100, 8192, 3 * 8192 + 77])
def test_cpp_signs_equal_the_torch_implementation(key, n):
    out = torch.empty(n)
    extension().signs_(out, key)
    assert torch.equal(out, rng.torch_signs(n, key))


def test_signs_are_fair_and_independent():
    torch.manual_seed(2)
    n = 1_000_000
    s = rng.signs(n).double().numpy()
    assert set(np.unique(s)) == {-1.0, 1.0}
    limit = 5 / math.sqrt(n)  # 5 standard errors of a mean or a correlation of independent +-1
    assert abs(s.mean()) < limit
    for lag in (1, 31, 32, 33, 128):  # neighbouring bits, words, counters
        assert abs(np.mean(s[:-lag] * s[lag:])) < limit, lag


def test_a_compiled_function_draws_what_the_eager_one_draws():
    require_compile()
    torch._dynamo.reset()

    def noisy(x):
        return x + rng.randn(*x.shape)

    x = torch.zeros(3, 1000)
    torch.manual_seed(3)
    eager = noisy(x)
    torch.manual_seed(3)
    compiled = compile_loss(noisy, torch.device("cpu"))(x)  # as the Trainer compiles: torch's generator draws
    assert torch.equal(eager, compiled)


def test_without_the_extension_the_torch_implementation_draws_the_same_numbers(monkeypatch):
    extension()
    torch.manual_seed(4)
    built, built_signs = rng.randn(1001), rng.signs(1001)

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(rng, "_build", no_compiler)
    monkeypatch.setattr(rng, "_backend", None)
    monkeypatch.setattr(rng, "_extension", None)
    with pytest.warns(RuntimeWarning, match="torch implementation of Philox.*no C\\+\\+ compiler"):
        torch.manual_seed(4)
        fallback = rng.randn(1001)
        fallback_signs = rng.signs(1001)
    assert rng.backend().startswith("torch (building philox.cpp failed: no C++ compiler")
    torch.testing.assert_close(fallback, built, rtol=1e-6, atol=1e-6)
    assert torch.equal(fallback_signs, built_signs)


def test_the_kernels_refuse_a_tensor_they_cannot_fill():
    for bad in (torch.empty(8, dtype=torch.float64), torch.empty(4, 4).t()):
        for fill in (extension().normal_, extension().signs_):
            with pytest.raises(RuntimeError, match="needs a contiguous float32 CPU tensor"):
                fill(bad, 1)
