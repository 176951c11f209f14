"""Evaluation: importance_weights reports the z its weights were computed at; bound_vs_k and grouped_bounds."""

from __future__ import annotations

import torch

from iwae_core import evaluate
from iwae_core.config import ModelConfig
from iwae_core.model import IWAE
from support import closed_form_log_weights


def model(variant: str, seed: int = 0) -> IWAE:
    torch.manual_seed(seed)
    return IWAE(ModelConfig.for_variant(variant, hidden=(16,), z_dim=3, init_sigma=0.1)).eval()


def test_importance_weights_z_are_those_that_produced_its_weights():
    torch.manual_seed(0)
    m = IWAE(ModelConfig(hidden=(16,), z_dim=3)).double().eval()
    x = torch.bernoulli(torch.full((784,), 0.2, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    r = evaluate.importance_weights(m, x, 50, seed=4)
    assert r["z"].shape == (50, 3) and r["log_w"].shape == (50,)
    expected = closed_form_log_weights(m, x[None], r["z"][:, None])[:, 0]
    torch.testing.assert_close(r["log_w"], expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(r["weights"], torch.softmax(expected, 0))


def test_importance_weights_run_the_encoder_once():
    m = model("iwae-r")
    calls = []
    m.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.bernoulli(torch.full((784,), 0.2), generator=torch.Generator().manual_seed(1))
    r = evaluate.importance_weights(m, x, 20, seed=3)
    assert len(calls) == 1
    with torch.random.fork_rng():
        torch.manual_seed(3)
        log_w, z = m.log_weights(x[None], 20, return_z=True)
    assert torch.equal(r["log_w"], log_w[:, 0]) and torch.equal(r["z"], z[:, 0])
