"""The element-wise functions and products with hand-written backward passes (iwae_core/maths/ops.py): values
against float64 references, gradients by gradcheck."""

import math

import pytest
import torch

from iwae_core.maths.ops import (
    flipout_fused,
    flipout_linear,
    flipout_noise,
    gaussian_kl,
    softplus,
    squared_input_product,
    tanh,
)
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


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bfloat16, in float64."""
    return t.to(torch.bfloat16).double()


@pytest.mark.parametrize("mean_dtype", [torch.bfloat16, None])
@pytest.mark.parametrize("L,B,n_in,n_out", [(25, 100, 400, 784), (3, 5, 33, 17), (1, 7, 40, 9)])
def test_flipout_linear_against_float64_with_the_products_operands_rounded_to_bfloat16(mean_dtype, L, B, n_in, n_out):
    """The fused Flipout layer (flipout.cpp around the products) against float64: y = x mu^T + bias + c +
    ((x s) w^T) r and its five gradients, the products' operands rounded to bfloat16 where the layer rounds them
    (the noise path always, the mean path in bf16-mixed) and the products in float64. Each bfloat16 product's
    result is rounded once (relative 2^-9), so the tolerance is 2^-8 of the sum of |operand| products per entry;
    a float32 mean path is held to 1e-5 of its own, so a mean path rounded to bfloat16 would fail. Widths with
    tails (33, 17, 9 against vectors of 16 and 32), an input shared by the samples (L = 1)."""
    require_native()
    torch.manual_seed(5)
    x = torch.randn(L, B, n_in)
    mu, w = torch.randn(n_out, n_in) / n_in**0.5, torch.randn(n_out, n_in) * 0.05
    bias, c, g = torch.randn(n_out), torch.randn(1, B, n_out) * 0.05, torch.randn(L, B, n_out)
    s, r = torch.randint(0, 2, (1, B, n_in)) * 2.0 - 1, torch.randint(0, 2, (1, B, n_out)) * 2.0 - 1
    assert flipout_fused(x, torch.bfloat16, mean_dtype)

    def run(x):
        inputs = [t.clone().requires_grad_() for t in (x, mu, bias, w, c)]
        y = flipout_linear(*inputs[:4], inputs[4], s, r, mean_dtype)
        y.backward(g)
        return torch.cat([y.detach().flatten()] + [t.grad.flatten() for t in inputs])

    got = run(x).double()
    sizes = [L * B * n_out, L * B * n_in, n_out * n_in, n_out, n_out * n_in, B * n_out]
    y, gx, gmu, gbias, gw, gc = got.split(sizes)
    low = mean_dtype == torch.bfloat16
    X, S, R, G = x.double(), s.double(), r.double(), g.double()
    xm, mum = (_bf16(X), _bf16(mu.double())) if low else (X, mu.double())
    gm = _bf16(G) if low else G
    xs, wl, gr = _bf16(X * S), _bf16(w.double()), _bf16(G * R)
    mean_tol = 2.0**-8 if low else 1e-5
    checks = {  # name: (got, float64 reference, tolerance per entry)
        "y": (y, xm @ mum.T + bias.double() + c.double() + (xs @ wl.T) * R,
              mean_tol * (xm.abs() @ mum.abs().T) + 2.0**-8 * (xs.abs() @ wl.abs().T) + 1e-6),
        "dx": (gx, gm @ mum + (gr @ wl) * S,
               mean_tol * (gm.abs() @ mum.abs()) + 2.0**-8 * (gr.abs() @ wl.abs()) + 1e-6),
        "dmu": (gmu, gm.reshape(-1, n_out).T @ xm.reshape(-1, n_in),
                mean_tol * (gm.abs().reshape(-1, n_out).T @ xm.abs().reshape(-1, n_in)) + 1e-6),
        "dbias": (gbias, G.sum((0, 1)), 1e-5 * G.abs().sum((0, 1))),
        "dw": (gw, gr.reshape(-1, n_out).T @ xs.reshape(-1, n_in),
               2.0**-8 * (gr.abs().reshape(-1, n_out).T @ xs.abs().reshape(-1, n_in)) + 1e-6),
        "dc": (gc, G.sum(0, keepdim=True), 1e-5 * G.abs().sum(0, keepdim=True)),
    }
    for name, (value, expected, tol) in checks.items():
        err = (value.reshape(expected.shape) - expected).abs()
        assert (err <= tol).all(), (name, (err / tol).max().item())


def test_flipout_kernels_give_the_same_bits_on_one_thread_and_two():
    """Each of flipout.cpp's four passes, on 7 data points x 9 samples (63 rows: two threads' ranges, at least 16
    rows each, split the rows, and the data points, unevenly) and widths with tails."""
    require_native()
    torch.manual_seed(6)
    ops = torch.ops.iwae_core
    x, s, r = torch.randn(63, 33), torch.randint(0, 2, (7, 33)) * 2.0 - 1, torch.randint(0, 2, (7, 17)) * 2.0 - 1
    mean, noise, bias, c = torch.randn(63, 17), torch.randn(63, 17).bfloat16(), torch.randn(17), torch.randn(7, 17)
    flat = lambda outputs: torch.cat([o.float().flatten() for o in outputs])  # noqa: E731
    for low in (True, False):
        on_one_and_two_threads(lambda t, low=low: flat(ops.flipout_inputs_cpu(t, s, low)), x)
        on_one_and_two_threads(lambda t, low=low: flat(ops.flipout_grad_output_cpu(t, r, low)), mean)
    for m in (mean, mean.bfloat16()):
        on_one_and_two_threads(lambda t: ops.flipout_output_cpu(t, noise, bias, c, r), m)
        on_one_and_two_threads(lambda t: ops.flipout_grad_input_cpu(t, noise, r), m)


def test_flipout_kernels_name_what_is_wrong_with_their_input():
    require_native()
    x, s = torch.randn(6, 5), torch.ones(3, 5)
    with pytest.raises(RuntimeError, match="per-data-point tensor must be"):
        torch.ops.iwae_core.flipout_inputs_cpu(x, torch.ones(4, 5), True)  # 6 rows are not a multiple of 4 points
    with pytest.raises(RuntimeError, match="x must be float32"):
        torch.ops.iwae_core.flipout_inputs_cpu(x.double(), s, True)
    mean, noise = torch.randn(6, 2), torch.randn(6, 2).bfloat16()
    with pytest.raises(RuntimeError, match=r"bias must be \[2\]"):
        torch.ops.iwae_core.flipout_output_cpu(mean, noise, torch.zeros(3), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="noise product must be bfloat16"):
        torch.ops.iwae_core.flipout_grad_input_cpu(mean, noise.float(), torch.ones(3, 2))


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
