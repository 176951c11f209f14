"""The computations behind the dashboard views: seeds make them reproducible, tau and draws do what they say."""

from __future__ import annotations

import torch

from iwae_core import explore
from iwae_core.config import ModelConfig
from iwae_core.maths.model import IWAE


def model(variant: str, seed: int = 0) -> IWAE:
    torch.manual_seed(seed)
    return IWAE(ModelConfig.for_variant(variant, hidden=(16,), z_dim=3, init_sigma=0.1)).eval()


def test_latent_draws_depend_only_on_the_seed():
    a, b = explore.latent_draws(3, 5, seed=7), explore.latent_draws(3, 5, seed=7)
    assert torch.equal(a, b) and a.shape == (5, 3)
    assert not torch.equal(a, explore.latent_draws(3, 5, seed=8))
    assert torch.equal(explore.latent_draws(3, 2, seed=7), a[:2])  # more draws keep the first ones


def test_more_weight_draws_keep_the_first_ones_and_random_decoders_differ_between_draws():
    m = model("iwae-r")
    z = explore.latent_draws(3, 4, seed=1)
    two = explore.decoder_samples(m, z, 2, noise_scale=1.0, seed=1)
    four = explore.decoder_samples(m, z, 4, noise_scale=1.0, seed=1)
    assert four.shape == (4, 4, 784)
    assert torch.equal(two, four[:2])
    assert (four[0] - four[1]).abs().max() > 1e-3
    assert four.std(0).max() > 1e-3


def test_tau_zero_and_deterministic_decoders_give_identical_draws():
    z = explore.latent_draws(3, 4, seed=2)
    still = explore.decoder_samples(model("iwae-r"), z, 3, noise_scale=0.0, seed=2)
    assert torch.equal(still[0], still[2])
    assert torch.equal(still[0], still[1])
    det = explore.decoder_samples(model("iwae"), z, 3, noise_scale=1.0, seed=2)
    assert torch.equal(det[0], det[1])


def test_larger_tau_spreads_the_samples_more():
    m = model("iwae-r")
    z = explore.latent_draws(3, 8, seed=3)
    small = explore.decoder_samples(m, z, 6, noise_scale=0.5, seed=3).std(0).mean()
    large = explore.decoder_samples(m, z, 6, noise_scale=2.0, seed=3).std(0).mean()
    assert large > small > 0


def test_traversal_rows_move_one_unit_and_offset_zero_decodes_the_start():
    m = model("iwae")
    z0 = explore.prior_draw(3, seed=4)
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    rows = explore.traversal(m, z0, [0, 2], offsets, noise_scale=0.0, seed=4)
    assert rows.shape == (2, 3, 784)
    start = torch.sigmoid(m.decode(z0[None, None], 0.0, "batch"))[0, 0]
    torch.testing.assert_close(rows[0, 1], start)
    torch.testing.assert_close(rows[1, 1], start)
    assert (rows[0, 0] - rows[1, 0]).abs().max() > 1e-4  # moving unit 0 or unit 2 gives different images


def test_encoded_mean_and_reconstruction_are_reproducible():
    m = model("iwae-r")
    x = torch.bernoulli(torch.full((784,), 0.3), generator=torch.Generator().manual_seed(0))
    a = explore.encoded_mean(m, x, 1.0, weight_draws=4, seed=5)
    assert torch.equal(a, explore.encoded_mean(m, x, 1.0, weight_draws=4, seed=5)) and a.shape == (3,)
    r = explore.reconstruction(m, x, 1.0, seed=5)
    assert torch.equal(r, explore.reconstruction(m, x, 1.0, seed=5)) and r.shape == (784,)


def test_weight_maps_are_one_row_of_784_per_hidden_unit():
    m = model("iwae-rrec")
    maps = explore.weight_maps(m)
    assert maps["encoder"]["sigma"].shape == (16, 784)
    assert maps["decoder"]["abs_mu"].shape == (16, 784)
    torch.testing.assert_close(maps["decoder"]["abs_mu"], m.decoder.layers[-1].weight_mu.abs().t())
    torch.testing.assert_close(maps["encoder"]["snr"], maps["encoder"]["abs_mu"] / maps["encoder"]["sigma"])
    assert maps["decoder"]["sigma"] is None and maps["decoder"]["snr"] is None  # Rrec: deterministic decoder
    assert set(explore.layer_sigmas(m)) == {"encoder.0", "encoder.1"}
    assert explore.layer_sigmas(model("iwae")) == {}


def test_bound_vs_k_reports_progress_without_changing_the_numbers(monkeypatch):
    from iwae_core import evaluate

    monkeypatch.setattr(evaluate, "ROWS_PER_CHUNK", 40_000)
    m = model("iwae-r")
    x = torch.bernoulli(torch.full((6, 784), 0.2), generator=torch.Generator().manual_seed(1))
    calls = []
    with_progress = evaluate.bound_vs_k(m, x, [5, 10000], seed=3, progress=lambda d, t: calls.append((d, t)))
    assert with_progress == evaluate.bound_vs_k(m, x, [5, 10000], seed=3)
    assert calls == [(6, 12), (10, 12), (12, 12)]  # k = 10000 runs in chunks of 4 images


def test_grouped_bounds_have_the_expectation_of_plain_l_k_and_less_variance():
    """Ground truth: plain L_k drawn many times (independent calls) gives E[L_k] per image up to Monte-Carlo
    error; the grouped estimator (one pass of k_max draws split in groups of k) must agree within 4 combined
    standard errors and, with k_max / k >= 5 groups, vary less than half as much between seeds as one plain L_k
    where every draw is independent (IWAE-Rrec: 'sample' granularity). A 'datapoint' random decoder (IWAE-R)
    shares one weight draw per image among all groups, which dominates the variance: its mean is checked."""
    from iwae_core import evaluate
    from iwae_core.maths.bounds import iwae_bound

    x = torch.bernoulli(torch.full((3, 784), 0.2), generator=torch.Generator().manual_seed(2))
    ks, repeats, seeds = [1, 5, 20, 100], 150, 50
    for variant in ("iwae-rrec", "iwae-r"):
        m = model(variant, seed=1)
        grouped = torch.stack([evaluate.grouped_bounds(m, x, ks, seed=s) for s in range(seeds)])  # [seeds, ks, n]
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
    from iwae_core import evaluate

    monkeypatch.setattr(evaluate, "ROWS_PER_CHUNK", 400)
    m = model("iwae-r")
    x = torch.bernoulli(torch.full((10, 784), 0.2), generator=torch.Generator().manual_seed(1))
    calls = []
    out = evaluate.grouped_bounds(m, x, [1, 10, 100], seed=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # 4 images of 100 draws per call
    torch.testing.assert_close(out[1:], evaluate.grouped_bounds(m, x, [10, 100], seed=3))  # same pass, same draws
    assert out[2].mean() > out[1].mean() > out[0].mean()  # L_k rises with k


def test_stored_curves_are_checked_before_use(tmp_path):
    import pytest
    from safetensors.torch import save_file

    from iwae_core import folders

    meta = {"model_sha256": "ab", "ks": "1,2,5", "seed": "0", "n_images": "4", "test_seed": "2016", "source": "s"}
    good = tmp_path / "good.safetensors"
    save_file({"k_max=5,tau=1": torch.zeros(3, 4), "k_max=2,tau=0": torch.zeros(2, 4)}, str(good), metadata=meta)
    curves = folders.read_bound_curves(good)
    assert curves["meta"]["ks"] == [1, 2, 5] and curves["k_max=5,tau=1"].shape == (3, 4)
    cases = {"shape": ({"k_max=5,tau=1": torch.zeros(2, 4)}, meta, "tensor k_max=5,tau=1 of shape"),
             "name": ({"tau=1": torch.zeros(3, 4)}, meta, "tensor tau=1 of shape"),
             "nan": ({"k_max=5,tau=1": torch.full((3, 4), float("nan"))}, meta, "finite"),
             "meta": ({"k_max=5,tau=1": torch.zeros(3, 4)}, {k: v for k, v in meta.items() if k != "seed"}, "'seed'")}
    for name, (tensors, metadata, words) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(folders.FileError, match=words) as err:
            folders.read_bound_curves(path)
        assert str(path) in str(err.value)
