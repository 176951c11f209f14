"""Pure functions on log importance weights log_w shaped [k, batch]: the bound L_k, ESS, objectives."""

from __future__ import annotations

import math

import torch

from . import ops


def logmeanexp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log(mean(exp(x))) along dim, computed stably with logsumexp."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """L_k = log (1/k) sum_m w_m per data point: [k, batch] -> [batch].

    The importance weighted bound of Burda, Grosse and Salakhutdinov, "Importance Weighted Autoencoders"
    (ICLR 2016, arXiv:1509.00519), Sec. 3."""
    return logmeanexp(log_w, dim=0)


def normalized_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Self-normalised importance weights w_m / sum_j w_j, [k, batch]."""
    return torch.softmax(log_w, dim=0)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS = (sum w)^2 / sum w^2 per data point, between 1 and k: [k, batch] -> [batch]."""
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


def surrogate_objective(log_w: torch.Tensor, estimator: str = "iwae") -> torch.Tensor:
    """Per-data-point quantity whose gradient is the chosen estimator's gradient: [k, batch] -> [batch].

    iwae and stl differentiate L_k itself (stl's log q uses stopped q parameters, see
    `IWAE.log_weights`). dreg differentiates sum_m w~_m log w_m, whose theta-gradient equals that
    of L_k; the extra factor w~_m on the phi path is applied by a hook on z in `IWAE.log_weights`.

    STL: Roeder, Wu and Duvenaud, "Sticking the Landing" (NeurIPS 2017, arXiv:1703.09194).
    DReG: Tucker, Lawson, Gu and Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives" (ICLR 2019, arXiv:1810.04152).
    The estimator is one of config.ESTIMATORS, checked once by TrainConfig (and the CLI).
    """
    if estimator == "dreg":
        return (normalized_weights(log_w).detach() * log_w).sum(0)
    return iwae_bound(log_w)


def normal_log_prob(z: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float) -> torch.Tensor:
    """log N(z | mean, std^2) summed over the last axis."""
    std = torch.as_tensor(std, dtype=z.dtype, device=z.device)
    return (-0.5 * ((z - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log prod_d Bernoulli(x_d | sigmoid(logits_d)) for binary x, summed over the last axis.

    x and logits broadcast against each other (e.g. x [batch, D] against logits [k, batch, D])."""
    return ops.bernoulli_log_prob(x, logits)
