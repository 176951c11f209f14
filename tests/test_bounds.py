"""Closed-form checks of the pure functions on log weights (iwae_core/maths/bounds.py): logmeanexp, ESS and the
Gaussian and Bernoulli log densities (the Bernoulli one also compiled)."""

import functools
import math

import pytest
import torch

from iwae_core.maths import ops
from iwae_core.maths.bounds import bernoulli_log_prob, effective_sample_size, logmeanexp, normal_log_prob
from support import on_one_and_two_threads, require_compile, require_native


def test_logmeanexp_is_stable_far_below_zero():
    # exp(-1e4) underflows to 0 in float64, so the naive formula gives -inf; the exact value is known.
    x = torch.tensor([[-1e4], [-1e4 + math.log(3.0)]], dtype=torch.float64)
    assert torch.exp(x).sum().item() == 0.0
    assert logmeanexp(x, 0).item() == pytest.approx(-1e4 + math.log(2.0), abs=1e-9)
    x32 = torch.full((5000, 3), -1e4)
    assert torch.allclose(logmeanexp(x32, 0), torch.full((3,), -1e4))


def test_logmeanexp_matches_naive_where_naive_is_safe():
    x = torch.randn(50, 7, dtype=torch.float64)
    assert torch.allclose(logmeanexp(x, 0), torch.log(torch.exp(x).mean(0)))


def test_effective_sample_size_limits():
    k = 64
    equal = torch.zeros(k, 2)
    assert torch.allclose(effective_sample_size(equal), torch.full((2,), float(k)))
    one_dominates = torch.full((k, 1), -1e4)
    one_dominates[3] = 0.0
    assert effective_sample_size(one_dominates).item() == pytest.approx(1.0)
    w = torch.rand(k, 3, dtype=torch.float64) + 0.1
    assert torch.allclose(effective_sample_size(torch.log(w)), w.sum(0) ** 2 / (w**2).sum(0))


def test_normal_log_prob_matches_torch_distributions():
    z, m, s = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4, 3) + 0.2
    expected = torch.distributions.Normal(m, s).log_prob(z).sum(-1)
    assert torch.allclose(normal_log_prob(z, m, s), expected, atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("d", [50, 17, 784])
def test_bernoulli_log_prob_matches_torch_distributions_in_value_and_gradient(d, compiled):
    """Eager, and under torch.compile, whose form logs products of up to 16 sigmoids in blocks (ops._product_length:
    10 blocks of 5 for d = 50, 17 of 1 for the prime 17, 7 of 112 for 784)."""
    if compiled:
        require_compile()
    log_prob = torch.compile(bernoulli_log_prob) if compiled else bernoulli_log_prob
    # Includes |logits| up to 200, where exp(-|y|) underflows and a naive log(sigmoid) would give -inf.
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, d), 0.3, dtype=torch.float64))
    logits = (torch.randn(4, 6, d, dtype=torch.float64) * 20).clamp(-200, 200)
    logits[0, 0, :4] = torch.tensor([200.0, -200.0, 90.0, -90.0], dtype=torch.float64)
    logits.requires_grad_(True)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    got = log_prob(x, logits)
    assert got.shape == (4, 6)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9)
    upstream = torch.randn(4, 6, dtype=torch.float64)
    (g_expected,) = torch.autograd.grad((expected * upstream).sum(), logits)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    assert torch.allclose(g_got, g_expected, rtol=0, atol=1e-12)
    # float32 keeps float32 accuracy: within 1e-3 nats of the float64 value for d pixels at k = 25, batch 100
    # (with d itself, so each case checks its own block form rather than repeating d = 784's)
    x32 = torch.bernoulli(torch.full((100, d), 0.13))
    l32 = torch.randn(25, 100, d) * 3
    exact = bernoulli_log_prob(x32.double(), l32.double())
    assert (log_prob(x32, l32).double() - exact).abs().max().item() < 1e-3


@pytest.mark.parametrize("compiled", [False, True])
def test_bernoulli_log_prob_in_float32_on_cpu_is_within_float32_rounding_of_float64(compiled):
    """Float32 on CPU (elementwise.cpp's one pass per row, eager and compiled; compiled, the gradient is
    inductor's): values and gradients in the logits against float64, for x [batch, D] and [1, batch, D] against
    logits [k, batch, D], D = 784 and 50 (a partial vector), logits up to +-200; the same on one thread as on two."""
    require_native()
    if compiled:
        require_compile()
        assert ops.native_elementwise()  # as compiled.compile_loss asks before tracing: the graph then calls the op
    torch.manual_seed(2)
    for d in (784, 50):
        log_prob = torch.compile(bernoulli_log_prob, dynamic=False) if compiled else bernoulli_log_prob
        x = torch.bernoulli(torch.full((100, d), 0.13))
        logits = (torch.randn(25, 100, d) * 8).clamp(-200, 200)
        logits[0, 0, :4] = torch.tensor([200.0, -200.0, 90.0, -90.0])
        exact = torch.distributions.Bernoulli(logits=logits.double()).log_prob(x.double().expand(25, 100, d)).sum(-1)
        upstream = torch.randn(25, 100)
        grad_exact = (x.double() - torch.sigmoid(logits.double())) * upstream.double().unsqueeze(-1)
        for xs in (x, x.unsqueeze(0)):
            lr = logits.clone().requires_grad_()
            got = log_prob(xs, lr)
            assert got.shape == (25, 100) and (got.double() - exact).abs().max().item() < 1e-3
            (grad,) = torch.autograd.grad((got * upstream).sum(), lr)
            assert (grad.double() - grad_exact).abs().max().item() < 1e-6
        on_one_and_two_threads(functools.partial(log_prob, x), logits)


def test_bernoulli_log_prob_gradient_in_x_and_broadcasting_pass_gradcheck():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((3, 5), 0.5, dtype=torch.float64)).requires_grad_(True)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bernoulli_log_prob, (x, logits))
