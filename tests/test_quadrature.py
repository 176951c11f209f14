"""Ground truth for a model with a 2-D latent: log p(x) by dense quadrature over z.

The mean of L_k over repeats must lie below log p(x) and approach it as k grows (k = 1 ... 5000), for
deterministic weights and for random weights at tau = 0; and the evaluation's joint-draw estimator must
approach the predictive log-likelihood log E_q(theta) p(x | theta) for random weights at tau = 1.
"""

import math

import pytest
import torch

from iwae_core.config import ModelConfig
from iwae_core.evaluate import log_likelihood
from iwae_core.maths.bounds import iwae_bound, normal_log_prob
from iwae_core.maths.model import IWAE

KS = [1, 10, 100, 1000, 5000]


def make_model(variant: str, seed: int = 0, init_sigma: float = 0.05) -> IWAE:
    torch.manual_seed(seed)
    model = IWAE(ModelConfig.for_variant(variant, x_dim=16, hidden=(12,), z_dim=2, init_sigma=init_sigma))
    with torch.no_grad():  # sharper decoder, so the posterior is far from the prior and the bound gap is real
        for layer in model.decoder.layers:
            layer.weight_mu.mul_(3.0)
    return model.double()


def quadrature_log_px(model: IWAE, x: torch.Tensor, n: int = 401, half_width: float = 7.0,
                      tau: float = 0.0, weight_draws: int = 1) -> torch.Tensor:
    """log p(x) = log sum_grid p(x|z) p(z) dz on an n x n grid; with weight draws, averaged over theta."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z = torch.cartesian_prod(g, g)  # [n*n, 2]
    log_dz = 2 * math.log(g[1] - g[0])
    log_pz = normal_log_prob(z, 0.0, 1.0)
    per_draw = []
    for _ in range(weight_draws):
        logits = model.decode(z[None], tau, "batch")[0]  # [G, 16], one theta for all grid points
        log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, None, :].expand(-1, len(x), -1), x[None].expand(len(z), -1, -1), reduction="none").sum(-1)
        per_draw.append(torch.logsumexp(log_px_z + log_pz[:, None], 0) + log_dz)
    return torch.logsumexp(torch.stack(per_draw), 0) - math.log(weight_draws)


@torch.no_grad()
def data_from_model(model: IWAE, n: int) -> torch.Tensor:
    torch.manual_seed(123)
    return torch.bernoulli(model.sample(n=n, tau=0.0)[0])


@torch.no_grad()
def test_quadrature_is_converged():
    model = make_model("iwae")
    x = data_from_model(model, 6)
    coarse, fine = quadrature_log_px(model, x, n=301), quadrature_log_px(model, x, n=601, half_width=8.0)
    assert torch.allclose(coarse, fine, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("variant", ["iwae", "iwae-r"])
def test_bound_lies_below_log_px_and_approaches_it(variant):
    model = make_model(variant)
    x = data_from_model(model, 8)
    log_px = quadrature_log_px(model, x)
    torch.manual_seed(7)
    repeats = 40
    gaps, ses = [], []
    for k in KS:
        lk = torch.stack([iwae_bound(model.log_weights(x, k, tau=0.0)) for _ in range(repeats)])
        mean, se = lk.mean(0), lk.std(0) / math.sqrt(repeats)
        # E[L_k] <= log p(x) for every image (4 standard errors of slack for the Monte-Carlo mean).
        assert (mean <= log_px + 4 * se + 1e-9).all(), (k, (mean - log_px).max().item())
        gaps.append((log_px - mean).mean().item())
        ses.append((se**2).mean().sqrt().item() / math.sqrt(len(x)))
    assert gaps[0] > 0.5, f"the test model should have a real bound gap at k=1, got {gaps[0]:.3f}"
    for i in range(len(KS) - 1):
        (g_a, s_a), (g_b, s_b) = (gaps[i], ses[i]), (gaps[i + 1], ses[i + 1])
        assert g_b < g_a + 3 * math.hypot(s_a, s_b), gaps  # the gap shrinks as k grows
    assert gaps[-1] < 0.02 and gaps[-1] < 0.05 * gaps[0], gaps  # and is nearly closed at k = 5000


@torch.no_grad()
def test_random_weights_at_tau0_equal_the_posterior_mean_network():
    bayes = make_model("iwae-r", seed=3)
    plain = IWAE(ModelConfig(x_dim=16, hidden=(12,), z_dim=2)).double()
    plain.load_state_dict({k: v for k, v in bayes.state_dict().items() if "rho" not in k})
    x = data_from_model(bayes, 5)
    torch.manual_seed(1)
    a = bayes.log_weights(x, 50, tau=0.0)
    torch.manual_seed(1)
    b = plain.log_weights(x, 50)
    assert torch.allclose(a, b)
    assert torch.allclose(quadrature_log_px(bayes, x), quadrature_log_px(plain, x))


@torch.no_grad()
def test_joint_draw_estimate_with_random_encoder_converges_to_log_px():
    """IWAE-Rrec at tau = 1: each (phi_s, z_s) pair gives an unbiased estimate of p(x), so the
    evaluation's S-draw estimate approaches the quadrature value (0.03 nats on average, 0.06 at most, at
    S = 100000; the untrained encoder is a poor proposal, so convergence in S is slow)."""
    model = make_model("iwae-rrec", seed=5, init_sigma=0.05)
    x = data_from_model(model, 4)
    truth = quadrature_log_px(model, x)
    torch.manual_seed(12)
    low = log_likelihood(model, x, S=10, tau=1.0)
    high = log_likelihood(model, x, S=100000, tau=1.0)
    assert ((high - truth).abs() < 0.06).all() and (high - truth).abs().mean() < 0.03, (high - truth)
    assert (truth - low).mean() > (truth - high).abs().mean()


@torch.no_grad()
def test_random_decoder_bound_approaches_expected_log_likelihood():
    """IWAE-R at tau = 1 with one decoder draw per data point: E[L_k] <= E_theta log p(x|theta), and
    approaches it as k grows. Ground truth: quadrature in z for each of 200 explicit theta draws."""
    model = make_model("iwae-r", seed=5, init_sigma=0.3)
    x = data_from_model(model, 3)
    torch.manual_seed(13)
    per_theta = torch.stack([quadrature_log_px(model, x, n=101, half_width=5.0, tau=1.0)
                             for _ in range(200)])
    truth, truth_se = per_theta.mean(0), per_theta.std(0) / math.sqrt(200)
    # the weights are really random: E_theta log p(x|theta) is well below log p(x) at tau = 0
    assert (quadrature_log_px(model, x, n=101, half_width=5.0) - truth > 0.1).all()
    reps = 100
    xr = x.repeat(reps, 1)  # every row gets its own decoder draw
    gaps = []
    for k in (1, 100, 2000):
        lk = iwae_bound(model.log_weights(xr, k)).reshape(reps, len(x))
        mean, se = lk.mean(0), lk.std(0) / math.sqrt(reps)
        tol = 4 * torch.sqrt(se**2 + truth_se**2)
        assert (mean <= truth + tol).all(), (k, mean - truth, tol)
        gaps.append(((truth - mean).abs().mean().item(), tol.max().item()))
    assert gaps[0][0] > 0.3, gaps  # a real gap at k = 1 ...
    assert gaps[-1][0] < max(0.1, gaps[-1][1]), gaps  # ... that closes at large k


@pytest.mark.slow
@torch.no_grad()
def test_mixture_bound_approaches_the_mixture_log_likelihood():
    """The mixture reading (--objective mixture): p(x) = E_q(theta)[int p(x|z; theta) p(z) dz], and the
    training bound draws its own theta (and phi) for every importance sample (granularity 'sample' in both
    networks), so E[L_k] <= log p(x) and closes on it as k grows. Ground truth: the quadrature in z of
    p(x|theta) for each of 1,000 explicit theta draws, averaged in probability (the Bayesian reading's
    E_theta log p(x|theta) above averages in log, and lies below by Jensen)."""
    model = make_model("iwae-r", seed=5, init_sigma=0.15)
    x = data_from_model(model, 3)
    torch.manual_seed(14)
    draws = 1000
    per_theta = torch.stack([quadrature_log_px(model, x, n=101, half_width=5.0, tau=1.0)
                             for _ in range(draws)])
    truth = torch.logsumexp(per_theta, 0) - math.log(draws)
    p = (per_theta - per_theta.max(0).values).exp()
    truth_se = p.std(0) / p.mean(0) / math.sqrt(draws)  # delta method for log(mean p)
    assert (truth - per_theta.mean(0) > 0.1).all()  # the two readings are different models here
    reps = 40
    xr = x.repeat(reps, 1)
    gaps = []
    for k in (1, 100, 5000):
        lk = iwae_bound(model.log_weights(xr, k, encoder_granularity="sample", decoder_granularity="sample"))
        lk = lk.reshape(reps, len(x))
        mean, se = lk.mean(0), lk.std(0) / math.sqrt(reps)
        tol = 4 * torch.sqrt(se**2 + truth_se**2)
        assert (mean <= truth + tol).all(), (k, mean - truth, tol)  # below the truth, within 4 s.e.
        gaps.append((truth - mean).mean().item())
    assert gaps[0] > 1.0 and gaps[0] > gaps[1] > gaps[2], gaps  # a real gap at k = 1 that shrinks with k
    assert gaps[2] < 0.1 and gaps[2] < 0.05 * gaps[0], gaps  # and nearly closes at k = 5000
