"""The element-wise functions and products with hand-written backward passes (iwae_core/maths/ops.py): values
against float64 references, gradients by gradcheck."""

import math

import pytest
import torch

from iwae_core.maths.ops import flipout_noise, gaussian_kl, softplus, squared_input_product, tanh
from support import on_one_and_two_threads, require_compile, require_native


@pytest.mark.parametrize("prior_std", [1.0, 0.3])
def test_gaussian_kl_matches_torch_distributions_and_its_gradient_passes_gradcheck(prior_std):
    """The weight KL's closed form and hand-written backward, in float64 against torch.distributions' KL and
    numerical gradients, over sigmas from 1e-6 (rho = -13.8) to 10; and in float32 against float64."""
    torch.manual_seed(11)
    mu = torch.randn(200, dtype=torch.float64) * 2
    rho = torch.linspace(-13.8, 10.0, 200, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.nn.functional.softplus(rho)),
        torch.distributions.Normal(*torch.tensor([0.0, prior_std], dtype=torch.float64))).sum()
    assert gaussian_kl(mu, rho, prior_std).item() == pytest.approx(expected.item(), rel=1e-12)
    mu_small = (torch.randn(4, 5, dtype=torch.float64) * 2).requires_grad_(True)
    rho_small = (torch.randn(4, 5, dtype=torch.float64) * 3 - 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, r: gaussian_kl(m, r, prior_std), (mu_small, rho_small))
    # float32, as trained: a KL of about 1e6 nats (sigma near 1e-3) to float32's relative precision
    mu32, rho32 = (torch.randn(784, 400) * 0.1), torch.full((784, 400), -6.9).add_(torch.rand(784, 400))
    kl32 = gaussian_kl(mu32, rho32, prior_std).double()
    kl64 = gaussian_kl(mu32.double(), rho32.double(), prior_std)
    assert abs(kl32 - kl64) / kl64 < 1e-6


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


def float32_range(low: float, high: float, stride: int) -> torch.Tensor:
    """Every stride-th float32 from low up to high (both >= 0), by bit pattern: all binades equally."""
    bits = torch.arange(torch.tensor(low).view(torch.int32).item(), torch.tensor(high).view(torch.int32).item(),
                        stride, dtype=torch.int32)
    return bits.view(torch.float32)


def ulps_from(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|y - exact| in units of the last place of exact rounded to float32 (float64 exact, float32 y)."""
    r = exact.float()
    ulp = (torch.nextafter(r.abs(), torch.tensor(math.inf)) - r.abs()).double()
    return (y.double() - exact).abs() / ulp


def test_tanh_on_cpu_is_within_2_ulp_of_float64_keeps_signs_zeros_and_nan_and_ignores_the_thread_count():
    """elementwise.cpp's tanh (ops.tanh on float32 CPU tensors): every 97th float32 in [0, 16), 11 million values,
    against float64 (its header's 1.8 ulp was measured on every one of them); odd; exactly 1 from 9.1; the same
    on one thread as on two."""
    require_native()
    x = float32_range(0.0, 16.0, 97)
    y = tanh(x)
    assert ulps_from(y, torch.tanh(x.double())).max().item() <= 2.0
    assert torch.equal(tanh(-x), -y)
    assert torch.all(y[x >= 9.1] == 1)  # where 1 - tanh x < 2^-25, half an ulp below 1
    assert torch.all(tanh(float32_range(16.0, 3.4e38, 9973)) == 1)  # and on to the largest float32
    special = torch.tensor([0.0, -0.0, -1e-40, math.inf, -math.inf, math.nan])
    out = tanh(special)
    assert torch.equal(torch.signbit(out[:3]), torch.tensor([False, True, True]))
    assert out[2].item() == pytest.approx(-1e-40, rel=1e-6)  # subnormals, as x itself
    assert out[3:5].tolist() == [1.0, -1.0] and math.isnan(out[5].item())
    odd = torch.randn(3, 100_003) * 3
    two = on_one_and_two_threads(tanh, odd)
    assert torch.equal(tanh(odd.t()), two.t())  # a transposed view: the same values
    assert tanh(x.double()).dtype == torch.float64  # other dtypes: ATen's
    with pytest.raises(RuntimeError, match="needs a float32 CPU tensor"):
        torch.ops.iwae_core.tanh_cpu(x.double())


def test_softplus_on_cpu_is_within_3_ulp_of_float64_from_the_smallest_sigma_to_large_inputs():
    """elementwise.cpp's softplus (ops.softplus on float32 CPU tensors, sigma = softplus(rho)): every 61st float32
    of either sign below 100 (sigma down to e^-100, rho from the checkpoints' lowest allowed up), 14 million values,
    against float64; softplus x = x from about 17 on, as F.softplus; NaN kept; the same on one thread as on two;
    its gradient is sigmoid, compiled or not."""
    require_native()
    magnitudes = float32_range(1e-30, 100.0, 61)
    x = torch.cat([-magnitudes, magnitudes])
    y = softplus(x)
    exact = torch.nn.functional.softplus(x.double())
    assert ulps_from(y, exact).max().item() <= 3.0
    big = torch.tensor([17.0, 20.0, 21.0, 1e4, 3e38])
    assert torch.equal(softplus(big), torch.nn.functional.softplus(big))
    assert softplus(torch.tensor([-200.0])).item() == 0.0 and math.isnan(softplus(torch.tensor([math.nan])).item())
    on_one_and_two_threads(softplus, torch.randn(3, 100_003) * 5)
    xr = (torch.randn(1000) * 5).requires_grad_()
    (grad,) = torch.autograd.grad(softplus(xr).sum(), xr)
    assert torch.allclose(grad, torch.sigmoid(xr.detach()), rtol=1e-6, atol=0)
    with pytest.raises(RuntimeError, match="softplus_cpu: needs a float32 CPU tensor"):
        torch.ops.iwae_core.softplus_cpu(x.double())


def test_without_the_kernels_tanh_and_softplus_are_torchs(monkeypatch):
    """No C++ compiler, or a failed build: ops.tanh and ops.softplus are torch.tanh and F.softplus, value for value."""
    from iwae_core.maths import native, ops

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(native, "_build", no_compiler)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(ops, "_native", None)
    x = torch.randn(1000) * 4
    assert torch.equal(tanh(x), torch.tanh(x)) and torch.equal(softplus(x), torch.nn.functional.softplus(x))
    assert ops.native_elementwise() is False
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        native.load()


@pytest.mark.slow
def test_tanh_and_softplus_compiled_are_the_same_ops_with_their_gradients():
    require_compile()
    require_native()
    torch.manual_seed(0)
    # both tails (where tanh rounds to +-1 and 1 - y^2 to 0), zero and tiny values
    x = torch.cat([torch.randn(2000) * 3, torch.tensor([-1e4, -40.0, -1e-30, 0.0, 1e-30, 40.0, 1e4])])
    compiled = torch.compile(lambda v: tanh(v * 1.0))  # a product before it, as after a layer
    assert torch.equal(compiled(x), tanh(x))  # elementwise.cpp's op inside the graph
    for f in (tanh, compiled):
        xr = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(f(xr).sum(), xr)
        assert torch.allclose(grad.double(), 1 - tanh(x).double() ** 2, rtol=1e-6, atol=1e-7)
    xd = x.double().requires_grad_()  # float64: ATen's tanh through the custom op
    (grad,) = torch.autograd.grad(compiled(xd).sum(), xd)
    assert torch.allclose(grad, 1 - torch.tanh(x.double()) ** 2, rtol=1e-12, atol=0)
    xs = torch.randn(6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(compiled, (xs,))
    softplus_compiled = torch.compile(lambda v: softplus(v * 1.0))
    xr = (torch.randn(1000) * 5).requires_grad_()
    assert torch.equal(softplus_compiled(xr), softplus(xr))
    (grad,) = torch.autograd.grad(softplus_compiled(xr).sum(), xr)
    assert torch.allclose(grad, torch.sigmoid(xr.detach()), rtol=1e-6, atol=0)


def test_compiled_likelihood_blocks_are_at_most_16_long_and_vectorise_where_they_can():
    """ops._product_length: each log of the compiled Bernoulli term takes a product of at most 16 sigmoids (all
    >= 0.5, so >= 1.5e-5); a block of 16k pixels where x_dim allows (tests/test_bounds.py checks the values)."""
    from iwae_core.maths.ops import _product_length

    assert [_product_length(n) for n in (784, 17, 50, 32, 1)] == [7, 1, 10, 2, 1]
