"""Evaluation (iwae_core/evaluate.py): a bad tau is refused by name at every public entry point of the engine."""

from __future__ import annotations

import pytest
import torch

from iwae_core import curves, evaluate
from iwae_core.config import ModelConfig
from iwae_core.maths.model import IWAE


def model(variant: str, seed: int = 0) -> IWAE:
    torch.manual_seed(seed)
    return IWAE(ModelConfig.for_variant(variant, hidden=(16,), z_dim=3, init_sigma=0.1)).eval()


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), -0.5, 1000.5, True, "1"])
def test_a_bad_noise_scale_is_refused_by_name_before_any_draw(tau, tmp_path):
    from iwae_core import checkpoint as ckpt
    from iwae_core.config import RunConfig, TrainConfig
    from iwae_core.scale.sharded import evaluate_sharded

    m = model("iwae-r")
    x = torch.bernoulli(torch.full((4, 784), 0.2), generator=torch.Generator().manual_seed(1))
    message = rf"^tau must be from 0 to 1000, got {tau}$"
    state = torch.get_rng_state()
    calls = {
        "log_likelihood": lambda: evaluate.log_likelihood(m, x, S=3, tau=tau),
        "log_likelihood_range": lambda: evaluate.log_likelihood_range(m, x, S=3, tau=tau),
        "bound_vs_k": lambda: curves.bound_vs_k(m, x, [1, 2], tau=tau),
        "grouped_bounds": lambda: curves.grouped_bounds(m, x, [1, 2], tau=tau),
        "importance_weights": lambda: curves.importance_weights(m, x[0], 3, tau=tau),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
        assert torch.equal(torch.get_rng_state(), state), name  # refused before drawing anything
    ckpt.save_model(tmp_path, m, RunConfig(m.config, TrainConfig(k=3)))
    plural = rf"^taus must be from 0 to 1000, got {tau}$"
    with pytest.raises(ValueError, match=plural):
        curves.write_bound_curves(tmp_path, x, [1, 2], k_maxes=(2,), taus=(1.0, tau))
    with pytest.raises(ValueError, match=plural):
        evaluate.evaluate_folder(tmp_path, S=3, taus=[1.0, tau], data={})
    with pytest.raises(ValueError, match=plural):
        evaluate_sharded([tmp_path], 1, S=3, taus=[tau])
    for ok in (0, 0.0, 1.0, 1000):
        assert evaluate.check_tau(ok) == ok
