"""Closed-form checks of the pure bound functions and of L_1 against the ELBO computed from its parts."""

import math

import pytest
import torch

from iwae_core.config import ModelConfig
from iwae_core.maths.bounds import bernoulli_log_prob, effective_sample_size, iwae_bound, logmeanexp, normal_log_prob
from iwae_core.maths.model import IWAE
from iwae_core.maths.ops import softplus, tanh


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


def test_bernoulli_log_prob_matches_torch_distributions_in_value_and_gradient():
    # Includes |logits| up to 200, where exp(-|y|) underflows and a naive log(sigmoid) would give -inf.
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, 50), 0.3, dtype=torch.float64))
    logits = (torch.randn(4, 6, 50, dtype=torch.float64) * 20).clamp(-200, 200)
    logits[0, 0, :4] = torch.tensor([200.0, -200.0, 90.0, -90.0], dtype=torch.float64)
    logits.requires_grad_(True)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    got = bernoulli_log_prob(x, logits)
    assert got.shape == (4, 6)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9)
    upstream = torch.randn(4, 6, dtype=torch.float64)
    (g_expected,) = torch.autograd.grad((expected * upstream).sum(), logits)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    assert torch.allclose(g_got, g_expected, rtol=0, atol=1e-12)
    # float32 keeps float32 accuracy: within 1e-4 nats of the float64 value for 784 pixels at k = 25.
    x32 = torch.bernoulli(torch.full((100, 784), 0.13))
    l32 = torch.randn(25, 100, 784) * 3
    exact = bernoulli_log_prob(x32.double(), l32.double())
    assert (bernoulli_log_prob(x32, l32).double() - exact).abs().max().item() < 1e-3


def test_bernoulli_log_prob_gradient_in_x_and_broadcasting_pass_gradcheck():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((3, 5), 0.5, dtype=torch.float64)).requires_grad_(True)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bernoulli_log_prob, (x, logits))


@pytest.mark.parametrize("variant", ["iwae", "iwae-r"])
def test_l1_equals_elbo_from_its_parts(variant):
    """L_1 = log p(x|z) + log p(z) - log q(z|x) for the same z: recompute each part with torch.distributions."""
    torch.manual_seed(0)
    cfg = ModelConfig.for_variant(variant, x_dim=20, hidden=(8,), z_dim=3, init_sigma=0.05)
    model = IWAE(cfg)
    x = torch.bernoulli(torch.full((5, 20), 0.4))
    torch.manual_seed(1)
    l1 = iwae_bound(model.log_weights(x, 1, encoder_granularity="batch", decoder_granularity="batch"))
    # Replay the same random draws: encoder weights, eps, decoder weights, in the order log_weights uses them.
    torch.manual_seed(1)
    mean, std = model.encode(x, 1, granularity="batch")
    z = mean + std * torch.randn(1, 5, 3)
    logits = model.decode(z, granularity="batch")
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    assert torch.allclose(l1, (log_px + log_pz - log_qz)[0], atol=1e-4)


def test_bound_increases_with_k_on_average():
    torch.manual_seed(0)
    model = IWAE(ModelConfig(x_dim=30, hidden=(16,), z_dim=4))
    x = torch.bernoulli(torch.full((200, 30), 0.3))
    means = [iwae_bound(model.log_weights(x, k)).mean().item() for k in (1, 5, 50)]
    assert means[0] < means[1] < means[2]


def test_softplus_matches_float64_reference_and_has_its_gradient():
    # Includes x far below 0, where log(1 + exp(x)) ~ exp(x) must not round to 0 (sigma = softplus(rho)).
    x = torch.cat([torch.linspace(-79, 100, 20001), torch.randn(10_000) * 5])
    expected = torch.nn.functional.softplus(x.double(), threshold=1000)
    rel = (softplus(x).double() - expected).abs() / expected
    assert rel.max().item() < 5e-7  # a few float32 ulps
    assert softplus(torch.tensor([-30.0])).item() == pytest.approx(math.exp(-30), rel=1e-6)
    xd = (torch.randn(30, dtype=torch.float64) * 4).requires_grad_(True)
    assert torch.autograd.gradcheck(softplus, (xd,))


def test_tanh_has_float32_absolute_accuracy_and_the_exact_gradient():
    # A hidden activation is summed with values of order 1 by the next layer: the absolute error counts.
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.logspace(-30, 1, 1000), -torch.logspace(-30, 1, 1000),
                   torch.tensor([0.0, 100.0, -100.0, float("inf"), float("-inf")])])
    err = (tanh(x).double() - torch.tanh(x.double())).abs()
    assert err.max().item() < 2e-7  # float32's spacing near +-1 is 1.2e-7
    assert tanh(torch.tensor([float("nan")])).isnan().all()
    xr = (torch.randn(10_000) * 3).requires_grad_(True)
    (g,) = torch.autograd.grad(tanh(xr).sum(), xr)
    assert (g.double() - (1 - torch.tanh(xr.detach().double()) ** 2)).abs().max().item() < 5e-7
    xd = (torch.randn(30, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(tanh, (xd,))


@pytest.mark.parametrize("d", [784, 50, 7])
def test_sum_of_logs_by_products_is_as_accurate_as_one_log_per_value(d):
    """The Bernoulli term logs products of up to 16 sigmoids in [0.5, 1]: no underflow, float32 accuracy."""
    from iwae_core.maths.ops import _sum_of_logs

    torch.manual_seed(2)
    p = torch.rand(25, 100, d) * 0.5 + 0.5
    p[0, 0] = 0.5  # the smallest value: 0.5^16 per product, far from float32's underflow
    p[0, 1] = 1.0 - torch.rand(d) * 1e-6  # values that round to 1 or just below
    exact = p.double().log().sum(-1)
    one_log_each = p.log().sum(-1).double()
    got = _sum_of_logs(p.clone()).double()
    assert torch.allclose(got[0, 0], torch.tensor(d * math.log(0.5), dtype=torch.float64), rtol=1e-6)
    assert (got - exact).abs().max() <= 2 * (one_log_each - exact).abs().max() + 1e-6
    assert torch.allclose(_sum_of_logs(p.double()), exact, rtol=0, atol=1e-12)
