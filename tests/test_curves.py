"""L_k against k and the diagnostics (iwae_core/curves.py): importance_weights reports the z its weights were
computed at; bound_vs_k and grouped_bounds against plain L_k."""

from __future__ import annotations

import torch

from iwae_core import curves
from iwae_core.config import ModelConfig
from iwae_core.maths.model import IWAE
from support import closed_form_log_weights


def model(variant: str, seed: int = 0) -> IWAE:
    torch.manual_seed(seed)
    return IWAE(ModelConfig.for_variant(variant, hidden=(16,), z_dim=3, init_sigma=0.1)).eval()


def test_importance_weights_z_are_those_that_produced_its_weights():
    torch.manual_seed(0)
    m = IWAE(ModelConfig(hidden=(16,), z_dim=3)).double().eval()
    x = torch.bernoulli(torch.full((784,), 0.2, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    r = curves.importance_weights(m, x, 50, seed=4)
    assert r["z"].shape == (50, 3) and r["log_w"].shape == (50,)
    expected = closed_form_log_weights(m, x[None], r["z"][:, None])[:, 0]
    torch.testing.assert_close(r["log_w"], expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(r["weights"], torch.softmax(expected, 0))


def test_importance_weights_run_the_encoder_once():
    m = model("iwae-r")
    calls = []
    m.encoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.bernoulli(torch.full((784,), 0.2), generator=torch.Generator().manual_seed(1))
    r = curves.importance_weights(m, x, 20, seed=3)
    assert len(calls) == 1
    with torch.random.fork_rng(), torch.no_grad():  # as importance_weights computes
        torch.manual_seed(3)
        log_w, z = m.log_weights(x[None], 20, return_z=True)
    assert torch.equal(r["log_w"], log_w[:, 0]) and torch.equal(r["z"], z[:, 0])


def test_bound_vs_k_reports_progress_without_changing_the_numbers(monkeypatch):
    from iwae_core import curves

    monkeypatch.setattr(curves, "ROWS_PER_CHUNK", 40_000)
    m = model("iwae-r")
    x = torch.bernoulli(torch.full((6, 784), 0.2), generator=torch.Generator().manual_seed(1))
    calls = []
    with_progress = curves.bound_vs_k(m, x, [5, 10000], seed=3, progress=lambda d, t: calls.append((d, t)))
    assert with_progress == curves.bound_vs_k(m, x, [5, 10000], seed=3)
    assert calls == [(6, 12), (10, 12), (12, 12)]  # k = 10000 runs in chunks of 4 images


def test_grouped_bounds_have_the_expectation_of_plain_l_k_and_less_variance():
    """Ground truth: plain L_k drawn many times (independent calls) gives E[L_k] per image up to Monte-Carlo
    error; the grouped estimator (one pass of k_max draws split in groups of k) must agree within 4 combined
    standard errors and, with k_max / k >= 5 groups, vary less than half as much between seeds as one plain L_k
    where every draw is independent (IWAE-Rrec: 'sample' granularity). A 'datapoint' random decoder (IWAE-R)
    shares one weight draw per image among all groups, which dominates the variance: its mean is checked."""
    from iwae_core import curves
    from iwae_core.maths.bounds import iwae_bound

    x = torch.bernoulli(torch.full((3, 784), 0.2), generator=torch.Generator().manual_seed(2))
    ks, repeats, seeds = [1, 5, 20, 100], 150, 50
    for variant in ("iwae-rrec", "iwae-r"):
        m = model(variant, seed=1)
        grouped = torch.stack([curves.grouped_bounds(m, x, ks, seed=s) for s in range(seeds)])  # [seeds, ks, n]
        assert grouped.shape == (seeds, len(ks), 3)
        for i, k in enumerate(ks):
            torch.manual_seed(1000 + k)
            with torch.no_grad():
                plain = torch.stack([iwae_bound(m.log_weights(x, k)) for _ in range(repeats)])  # [repeats, n]
            se = (plain.var(0) / repeats + grouped[:, i].var(0) / seeds).sqrt()
            gap = (grouped[:, i].mean(0) - plain.mean(0)).abs()
            assert (gap < 4 * se).all(), (variant, k, gap, se)
            if 100 // k >= 5 and variant == "iwae-rrec":
                assert (grouped[:, i].var(0) < plain.var(0) / 2).all(), (variant, k)
        # the last k uses all draws in one group: it is the plain L_k_max of that pass
        torch.manual_seed(7)
        with torch.no_grad():
            torch.testing.assert_close(grouped[7, -1], iwae_bound(m.log_weights(x, 100)))


def test_grouped_bounds_reuse_one_pass_and_report_progress(monkeypatch):
    from iwae_core import curves

    monkeypatch.setattr(curves, "ROWS_PER_CHUNK", 400)
    m = model("iwae-r")
    x = torch.bernoulli(torch.full((10, 784), 0.2), generator=torch.Generator().manual_seed(1))
    calls = []
    out = curves.grouped_bounds(m, x, [1, 10, 100], seed=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # 4 images of 100 draws per call
    torch.testing.assert_close(out[1:], curves.grouped_bounds(m, x, [10, 100], seed=3))  # same pass, same draws
    assert out[2].mean() > out[1].mean() > out[0].mean()  # L_k rises with k
