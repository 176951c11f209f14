"""The random layers' sigma is learned at Adam's normal rate: ground truth from Bayesian linear regression.

For y_ij = w_j x_i + b_j + N(0, s_n^2) noise with prior N(0, s^2) on w_j and b_j and centred inputs
(sum_i x_i = 0), the exact posterior factorises: w_j and b_j are independent Gaussians with variances
1 / (1/s^2 + sum_i x_i^2 / s_n^2) and 1 / (1/s^2 + N / s_n^2). The mean-field Gaussian q that maximises
the per-datapoint ELBO (1/N) sum_i E_q log p(y_i | w, b) - KL(q || p) / N is therefore that posterior,
so its sigma is known in closed form. This is the Trainer's objective for a random layer: a likelihood
averaged over the data and KL / N, with N = 60,000 like MNIST, where rho's gradient (about 1/N per weight
at sigma = 1e-3) sits below the means' Adam eps of 1e-4.
"""

import math

import torch

from iwae_core.config import TrainConfig
from iwae_core.maths.layers import BayesLinear
from iwae_core.train import build_adam, set_lr

N, J, NOISE_STD, PRIOR_STD = 60_000, 32, 10.0, 1.0
STEPS, LR, LR_FINAL = 1500, 1e-2, 1e-4


def regression_data(seed: int = 0) -> dict[str, torch.Tensor]:
    """Sufficient statistics of N points per output j: the log-likelihood of any (w, b) needs only these."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, generator=gen, dtype=torch.float64)
    x = (x - x.mean()) / x.std(correction=0)  # centred, sum x^2 = N exactly
    w, b = torch.randn(J, generator=gen, dtype=torch.float64), torch.randn(J, generator=gen, dtype=torch.float64)
    y = x * w + b + NOISE_STD * torch.randn(N, J, generator=gen, dtype=torch.float64)
    return {"sxx": (x**2).sum(), "sx": x.sum(), "sxy": (x * y).sum(0), "sy": y.sum(0), "syy": (y**2).sum(0)}


def mean_log_lik(stats: dict, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/N) sum_ij log N(y_ij | w_j x_i + b_j, NOISE_STD^2) up to a constant, for weight draws w, b: [D, J]."""
    sq = (stats["syy"] - 2 * w * stats["sxy"] - 2 * b * stats["sy"] + w**2 * stats["sxx"] + 2 * w * b * stats["sx"]
          + N * b**2)
    return (-0.5 * sq / NOISE_STD**2).sum(-1).mean() / N


def fit_sigma(rho_adam_eps: float, seed: int = 0, draws: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Train one BayesLinear(1 -> J) on the regression ELBO with the Trainer's optimiser and schedule,
    reparameterised weight draws w = mu + sigma * eps (a few per step)."""
    stats = {key: v.float() for key, v in regression_data(seed).items()}
    torch.manual_seed(seed)
    layer = BayesLinear(1, J, random=True, prior_std=PRIOR_STD, init_sigma=1e-3)
    cfg = TrainConfig(lr=LR, adam_eps=1e-4, rho_adam_eps=rho_adam_eps)
    opt = build_adam(layer, cfg, torch.device("cpu"))
    for step in range(STEPS):
        t = step / STEPS
        set_lr(opt, LR_FINAL + 0.5 * (LR - LR_FINAL) * (1 + math.cos(math.pi * t)))
        w = layer.weight_mu[:, 0] + layer.weight_sigma[:, 0] * torch.randn(draws, J)
        b = layer.bias_mu + layer.bias_sigma * torch.randn(draws, J)
        loss = -(mean_log_lik(stats, w, b) - layer.kl_divergence() / N)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer.weight_sigma.detach().squeeze(1), layer.bias_sigma.detach()


def exact_sigmas() -> tuple[float, float]:
    sum_x2 = regression_data()["sxx"].item()
    sigma_w = (1 / PRIOR_STD**2 + sum_x2 / NOISE_STD**2) ** -0.5
    sigma_b = (1 / PRIOR_STD**2 + N / NOISE_STD**2) ** -0.5
    return sigma_w, sigma_b


def test_sigma_reaches_the_exact_posterior_std():
    sigma_w, sigma_b = exact_sigmas()
    assert 0.03 < sigma_w < 0.05  # 40 times the initial 1e-3: sigma has to travel to get there
    w, b = fit_sigma(rho_adam_eps=TrainConfig().rho_adam_eps)
    # every one of the 64 sigmas within 10 % of its optimum after 1,500 steps (four weight draws per step)
    assert (w / sigma_w - 1).abs().max() < 0.10, (w / sigma_w).tolist()
    assert (b / sigma_b - 1).abs().max() < 0.10, (b / sigma_b).tolist()


def test_the_means_eps_on_rho_throttles_it():
    """The control: with the means' eps (1e-4) on rho too, as runs had before, sigma lags far behind."""
    sigma_w, _ = exact_sigmas()
    w, _ = fit_sigma(rho_adam_eps=1e-4)
    assert w.max() < 0.5 * sigma_w, (w.max().item(), sigma_w)


def test_one_adam_group_when_rho_has_the_means_settings():
    """Runs saved before rho had its own settings resume into the same one-group optimiser."""
    layer = BayesLinear(3, 2, random=True)
    assert len(build_adam(layer, TrainConfig(adam_eps=1e-4, rho_adam_eps=1e-4)).param_groups) == 1
    groups = build_adam(layer, TrainConfig(adam_eps=1e-4, rho_lr_scale=3.0)).param_groups
    assert [g["eps"] for g in groups] == [1e-4, 1e-8]
    assert [len(g["params"]) for g in groups] == [2, 2]  # weight_mu, bias_mu | weight_rho, bias_rho
    set_lr(build_adam(layer, TrainConfig()), 1e-3)
    opt = build_adam(layer, TrainConfig(rho_lr_scale=3.0))
    set_lr(opt, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 3e-3]
