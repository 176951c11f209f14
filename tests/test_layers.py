"""BayesLinear (iwae_core/maths/layers.py): each granularity draws weights as specified; KL closed form against Monte
Carlo; a bfloat16 noise path stays close to float32."""

import math

import pytest
import torch

from iwae_core.maths.layers import BayesLinear, inverse_softplus
from iwae_core.maths.ops import gaussian_kl
from support import require_native


def make_layer(in_f=3, out_f=2, sigma=0.5, seed=0) -> BayesLinear:
    torch.manual_seed(seed)
    layer = BayesLinear(in_f, out_f, random=True, init_sigma=sigma).double()
    with torch.no_grad():  # distinct sigmas per entry, so a mix-up of entries would show
        layer.weight_rho.add_(torch.randn_like(layer.weight_rho) * 0.3)
        layer.bias_rho.add_(torch.randn_like(layer.bias_rho) * 0.3)
        layer.bias_mu.normal_()
    return layer


def effective_weights(layer: BayesLinear, batch: int, granularity: str, copies: int = 2) -> torch.Tensor:
    """Read the weights each (sample, data point) row used: rows m = basis vectors e_j and a zero input.

    Returns [copies, batch, out, in + 1] (last column: the bias), drawn in one call with k = copies * (in + 1).
    """
    n_in = layer.in_features
    basis = torch.cat([torch.eye(n_in), torch.zeros(1, n_in)]).double()  # [in + 1, in]
    x = basis.repeat(copies, 1)[:, None, :].expand(-1, batch, -1).contiguous()  # [k, batch, in]
    y = layer(x, x.shape[0], granularity).reshape(copies, n_in + 1, batch, -1)  # [copies, in+1, batch, out]
    bias = y[:, -1]  # [copies, batch, out]
    weights = y[:, :-1] - bias[:, None]  # column j of W: response to e_j minus bias
    return torch.cat([weights.permute(0, 2, 3, 1), bias[..., None]], dim=-1)


def test_datapoint_shares_weights_over_samples_and_differs_across_data_points():
    layer = make_layer()
    torch.manual_seed(1)
    w = effective_weights(layer, batch=4, granularity="datapoint", copies=3)
    assert torch.allclose(w[0], w[1]) and torch.allclose(w[0], w[2])  # all k samples of a data point agree
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(w[0, a], w[0, b])


def test_sample_draws_fresh_weights_per_row_and_batch_shares_one_draw():
    layer = make_layer()
    torch.manual_seed(2)
    ws = effective_weights(layer, batch=3, granularity="sample")
    # With local reparameterisation the responses to e_j and to 0 are independent draws, so "weights"
    # read this way differ between copies: rows do not share noise.
    assert not torch.allclose(ws[0], ws[1])
    wb = effective_weights(layer, batch=3, granularity="batch", copies=3)
    assert torch.allclose(wb[0], wb[2]) and torch.allclose(wb[0, 0], wb[0, 2])


def moments_check(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Sample mean and variance agree with the given ones within 5 standard errors (Gaussian draws)."""
    n = samples.shape[0]
    m, v = samples.mean(0), samples.var(0)
    assert ((m - mean).abs() < 5 * (var / n).sqrt()).all(), (m, mean)
    assert ((v - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all(), (v, var)


def test_sample_granularity_matches_explicit_per_row_weights():
    """Local reparameterisation gives each row the output distribution of its own explicit weight draw."""
    layer = make_layer(in_f=5, out_f=3)
    torch.manual_seed(3)
    x = torch.randn(1, 2, 5, dtype=torch.float64)  # two data points, shared by all rows
    n = 20000
    y_lrt = layer(x, n, "sample")  # [n, 2, 3]
    mu, sig = layer.weight_mu, layer.weight_sigma
    bmu, bsig = layer.bias_mu, layer.bias_sigma
    w = mu + sig * torch.randn(n, 2, *mu.shape, dtype=torch.float64)  # explicit draw per row
    b = bmu + bsig * torch.randn(n, 2, *bmu.shape, dtype=torch.float64)
    y_explicit = torch.einsum("nboi,bi->nbo", w, x[0]) + b
    mean = x[0] @ mu.T + bmu
    var = (x[0] ** 2) @ (sig**2).T + bsig**2
    moments_check(y_lrt.detach(), mean.detach(), var.detach())
    moments_check(y_explicit.detach(), mean.detach(), var.detach())
    # rows are independent: correlation between two rows' outputs vanishes
    corr = torch.corrcoef(torch.stack([y_lrt[:-1, 0, 0], y_lrt[1:, 0, 0]]))[0, 1]
    assert abs(corr.item()) < 5 / math.sqrt(n)


def test_datapoint_weights_have_the_posterior_marginal():
    """Flipout's per-data-point weights are marginally N(mu, sigma^2): moments over many independent calls.

    (Within one call the data points share |sigma * eps| and differ only in signs, so the marginal is
    checked across calls.)"""
    layer = make_layer(in_f=2, out_f=2)
    torch.manual_seed(4)
    w = torch.cat([effective_weights(layer, batch=2, granularity="datapoint", copies=1)[0, :1]
                   for _ in range(5000)])  # [calls, out, in + 1]
    mean = torch.cat([layer.weight_mu, layer.bias_mu[:, None]], 1).detach()
    var = torch.cat([layer.weight_sigma, layer.bias_sigma[:, None]], 1).detach() ** 2
    moments_check(w.detach(), mean, var)


def test_noise_scale_scales_the_spread():
    layer = make_layer(in_f=4, out_f=2)
    x = torch.randn(1, 1, 4, dtype=torch.float64)
    torch.manual_seed(5)
    y1 = layer(x, 20000, "sample", tau=1.0)
    torch.manual_seed(5)
    y2 = layer(x, 20000, "sample", tau=2.0)
    mean = layer(x, 1, "sample", tau=0.0)
    assert torch.allclose(y2 - mean, 2 * (y1 - mean))
    assert torch.equal(mean, torch.nn.functional.linear(x, layer.weight_mu, layer.bias_mu))


@pytest.mark.parametrize("prior_std", [1.0, 0.3])
def test_kl_closed_form_matches_monte_carlo(prior_std):
    torch.manual_seed(6)
    mu = torch.randn(50, dtype=torch.float64) * 0.5
    sigma = torch.rand(50, dtype=torch.float64) * 0.5 + 0.05
    n = 200000
    w = mu + sigma * torch.randn(n, 50, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(w).sum(-1)
    log_p = torch.distributions.Normal(0.0, prior_std).log_prob(w).sum(-1)
    ratio = log_q - log_p
    mc, se = ratio.mean(), ratio.std() / math.sqrt(n)
    rho = torch.tensor([inverse_softplus(s) for s in sigma.tolist()], dtype=torch.float64)
    assert abs(gaussian_kl(mu, rho, prior_std) - mc) < 4 * se
    layer = BayesLinear(3, 2, random=True, prior_std=prior_std, init_sigma=0.2)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.cat([layer.weight_mu.flatten(), layer.bias_mu]),
                                   torch.cat([layer.weight_sigma.flatten(), layer.bias_sigma])),
        torch.distributions.Normal(0.0, prior_std)).sum()
    assert torch.allclose(layer.kl_divergence(), expected)


def test_deterministic_layer_has_no_noise_and_no_kl():
    layer = BayesLinear(3, 2, random=False)
    x = torch.randn(1, 4, 3)
    assert torch.equal(layer(x, 10, "sample"), layer(x, 10, "sample"))
    assert layer.kl_divergence().item() == 0.0
    assert not any("rho" in name for name, _ in layer.named_parameters())


def test_unknown_granularity_is_rejected():
    with pytest.raises(ValueError, match="granularity"):
        make_layer()(torch.randn(1, 2, 3, dtype=torch.float64), 1, "per-pixel")


@pytest.mark.parametrize("granularity", ["datapoint", "sample"])
def test_bfloat16_noise_path_agrees_with_float32_on_the_same_draws(granularity):
    """bfloat16 keeps 8 significant bits (relative rounding <= 2^-9 = 0.2%); the products accumulate in
    float32, so the noise path (output minus mean) and the gradients differ from float32 by a few tenths of
    a percent. Tolerances: 1% of the noise path's size, 1% relative error of each gradient."""
    torch.manual_seed(0)
    layer = BayesLinear(400, 300, random=True, init_sigma=0.05)
    x = torch.tanh(torch.randn(25, 20, 400))
    results = {}
    for dtype in (None, torch.bfloat16):
        layer.noise_dtype = dtype
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        torch.manual_seed(1)
        y = layer(xg, 25, granularity)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        results[dtype] = (y.detach(), xg.grad, layer.weight_mu.grad.clone(), layer.weight_rho.grad.clone())
    mean = torch.nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
    (y32, *grads32), (y16, *grads16) = results[None], results[torch.bfloat16]
    noise = y32 - mean
    # the bfloat16 path really ran (it rounds: ~0.1-0.3% here), and stays within the tolerance
    assert 1e-4 * noise.norm() < (y16 - y32).norm() < 0.01 * noise.norm(), ((y16 - y32).norm(), noise.norm())
    (gx32, gmu32, grho32), (gx16, gmu16, grho16) = grads32, grads16
    assert torch.equal(gmu16, gmu32)  # the mean path is float32 either way
    for g32, g16 in ((gx32, gx16), (grho32, grho16)):
        assert 1e-5 * g32.norm() < (g16 - g32).norm() < 0.01 * g32.norm(), ((g16 - g32).norm(), g32.norm())


@pytest.mark.parametrize("mean_dtype", [None, torch.bfloat16])
def test_uncompiled_flipout_with_bfloat16_noise_fuses_its_passes_and_keeps_the_draws_values_and_gradients(
        monkeypatch, mean_dtype):
    """A 'datapoint' layer with bfloat16 noise products takes ops.flipout_linear (flipout.cpp's passes around the
    products) uncompiled on CPU: the same draws, so the same outputs and gradients as the composition of the mean
    path and flipout_noise, to float32 rounding of the sums (relative 1e-6), and torch's stream ends where it did."""
    require_native()
    from iwae_core.maths import layers

    torch.manual_seed(0)
    layer = BayesLinear(40, 70, random=True, init_sigma=0.05)
    layer.noise_dtype, layer.mean_dtype = torch.bfloat16, mean_dtype
    x = torch.randn(5, 9, 40)
    assert layers.flipout_fused(x, torch.bfloat16, mean_dtype)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(layers, "flipout_fused", lambda *args: False)
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        torch.manual_seed(1)
        y = layer(xg, 5, "datapoint", tau=0.8)
        after = torch.randn(1)
        (y * torch.linspace(-1, 1, 70)).sum().backward()
        results.append((y.detach(), xg.grad, *(p.grad.clone() for p in layer.parameters()), after))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("k,batch", [(7, 5), (2, 1)])
def test_datapoint_draw_without_gradients_builds_each_data_points_weights_with_the_same_draws(k, batch):
    """Without gradients, a 'datapoint' draw multiplies each data point's rows by its explicitly built weights
    (one product per row instead of Flipout's two): the same draws give the same outputs (to rounding in
    float64), every row of a data point still uses one weight matrix, and torch's stream ends where it did."""
    layer = make_layer(in_f=6, out_f=4)
    x = torch.randn(k, batch, 6, dtype=torch.float64)
    torch.manual_seed(3)
    flipout = layer(x, k, "datapoint", tau=0.7)  # parameters require grad: the Flipout products
    after_flipout = torch.randn(1)
    torch.manual_seed(3)
    with torch.no_grad():
        assert layer._materialize(x)
        built = layer(x, k, "datapoint", tau=0.7)
    assert torch.equal(torch.randn(1), after_flipout)
    torch.testing.assert_close(built, flipout.detach(), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        w = effective_weights(layer, batch=3, granularity="datapoint", copies=3)
    assert torch.allclose(w[0], w[1]) and torch.allclose(w[0], w[2]) and not torch.allclose(w[0, 0], w[0, 1])


def test_datapoint_weights_are_built_only_where_they_fit_and_help():
    layer = make_layer(in_f=6, out_f=4)
    with torch.no_grad():
        assert not layer._materialize(torch.zeros(1, 5, 6, dtype=torch.float64))  # one row per data point
        assert not layer._materialize(torch.zeros(2, layer.MATERIALIZED_MAX // 24 + 1, 6, dtype=torch.float64))
        layer.noise_dtype = torch.bfloat16  # lower-precision products keep the Flipout path
        assert not layer._materialize(torch.zeros(3, 5, 6))
    assert not make_layer()._materialize(torch.zeros(3, 5, 3, dtype=torch.float64))  # gradients are on
