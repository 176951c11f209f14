"""The element-wise functions and products with hand-written backward passes (iwae_core/maths/ops.py): values
against float64 references, gradients by gradcheck."""

import math

import pytest
import torch

from iwae_core.maths.ops import flipout_noise, softplus, squared_input_product, tanh


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


def test_flipout_noise_backward_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)  # [k, batch, in]
    w = torch.randn(6, 5, dtype=torch.double, requires_grad=True)
    s = torch.randint(0, 2, (1, 4, 5)).double() * 2 - 1
    r = torch.randint(0, 2, (1, 4, 6)).double() * 2 - 1
    assert torch.autograd.gradcheck(lambda x, w: flipout_noise(x, s, w, r), (x, w))
    x1 = x[:1].detach().clone().requires_grad_()  # an input shared by the k samples: [1, batch, in]
    assert torch.autograd.gradcheck(lambda x, w: flipout_noise(x, s, w, r), (x1, w))
    expected = ((x * s) @ w.T) * r
    assert torch.allclose(flipout_noise(x, s, w, r), expected, rtol=1e-12, atol=0)


def test_squared_input_product_backward_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    v = torch.rand(6, 5, dtype=torch.double, requires_grad=True)
    b = torch.rand(6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(squared_input_product, (x, v, b))
    assert torch.allclose(squared_input_product(x, v, b), (x * x) @ v.T + b, rtol=1e-12, atol=0)
