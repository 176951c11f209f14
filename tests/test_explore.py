"""The computations behind the dashboard views (iwae_core/explore.py): seeds make them reproducible, tau and
draws do what they say."""

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
    two = explore.decoder_samples(m, z, 2, tau=1.0, seed=1)
    four = explore.decoder_samples(m, z, 4, tau=1.0, seed=1)
    assert four.shape == (4, 4, 784)
    assert torch.equal(two, four[:2])
    assert (four[0] - four[1]).abs().max() > 1e-3
    assert four.std(0).max() > 1e-3


def test_tau_zero_and_deterministic_decoders_give_identical_draws():
    z = explore.latent_draws(3, 4, seed=2)
    still = explore.decoder_samples(model("iwae-r"), z, 3, tau=0.0, seed=2)
    assert torch.equal(still[0], still[2])
    assert torch.equal(still[0], still[1])
    det = explore.decoder_samples(model("iwae"), z, 3, tau=1.0, seed=2)
    assert torch.equal(det[0], det[1])


def test_larger_tau_spreads_the_samples_more():
    m = model("iwae-r")
    z = explore.latent_draws(3, 8, seed=3)
    small = explore.decoder_samples(m, z, 6, tau=0.5, seed=3).std(0).mean()
    large = explore.decoder_samples(m, z, 6, tau=2.0, seed=3).std(0).mean()
    assert large > small > 0


def test_traversal_rows_move_one_unit_and_offset_zero_decodes_the_start():
    m = model("iwae")
    z0 = explore.prior_draw(3, seed=4)
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    rows = explore.traversal(m, z0, [0, 2], offsets, tau=0.0, seed=4)
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


# The views as they were computed before the weight draws were shared: one model call per draw (or per unit),
# each under the global RNG seeded for it. The faster paths must give exactly these bits, so a shared link shows
# the same images as before.
def reference_decoder_samples(m, z, draws, tau, seed):
    out = []
    for d in range(draws):
        with torch.random.fork_rng():
            torch.manual_seed(explore._seeded(seed, 1, d))
            out.append(m.sample(z, tau=tau)[0])
    return torch.stack(out)


def reference_reconstructions(m, x, draws, tau, seed):
    out = []
    for d in range(draws):
        with torch.random.fork_rng():
            torch.manual_seed(explore._seeded(seed, 6, d))
            out.append(m.reconstruct(x, tau))
    return torch.stack(out)


def reference_traversal(m, z0, units, offsets, tau, seed):
    rows = []
    for u in units:
        with torch.random.fork_rng():
            torch.manual_seed(explore._seeded(seed, 4))
            rows.append(m.traverse(z0, u, z0[u] + offsets, tau=tau))
    return torch.stack(rows)


def reference_encoded_mean(m, x, tau, draws, seed):
    draws = draws if m.config.random_encoder and tau > 0 else 1
    with torch.random.fork_rng():
        torch.manual_seed(explore._seeded(seed, 2))
        return m.posterior_mean(x[None], draws, tau)[0]


def reference_reconstruction(m, x, tau, seed):
    with torch.random.fork_rng():
        torch.manual_seed(explore._seeded(seed, 5))
        return m.reconstruct(x[None], tau)[0]


def shipped_size_model(variant: str) -> IWAE:
    """The shipped models' shape (784-400-40, two random layers per random network), sigma large enough that
    the noise path changes the low bits of every product."""
    torch.manual_seed(1)
    return IWAE(ModelConfig.for_variant(variant, hidden=(400,), z_dim=40, init_sigma=0.05)).eval()


def test_shared_weight_draws_equal_one_model_call_per_draw_bit_for_bit():
    x = torch.bernoulli(torch.full((17, 784), 0.3), generator=torch.Generator().manual_seed(2))
    offsets = torch.linspace(-3, 3, 9)
    compared = 0
    for variant in ("iwae", "iwae-r", "iwae-rrec"):
        m = shipped_size_model(variant)
        for tau, seed, draws, n in ((1.0, 0, 4, 8), (0.35, 7, 12, 16), (0.0, 3, 3, 2), (2.5, 123456789, 1, 5)):
            z = explore.latent_draws(40, n, seed)
            checks = {
                "decoder_samples": (explore.decoder_samples(m, z, draws, tau, seed),
                                    reference_decoder_samples(m, z, draws, tau, seed)),
                "reconstructions": (explore.reconstructions(m, x[:n], draws, tau, seed),
                                    reference_reconstructions(m, x[:n], draws, tau, seed)),
                "encoded_mean": (explore.encoded_mean(m, x[n], tau, 10, seed),
                                 reference_encoded_mean(m, x[n], tau, 10, seed)),
                "reconstruction": (explore.reconstruction(m, x[n], tau, seed),
                                   reference_reconstruction(m, x[n], tau, seed)),
            }
            z0 = checks["encoded_mean"][1]
            checks["traversal"] = (explore.traversal(m, z0, [3, 0, 39], offsets, tau, seed),
                                   reference_traversal(m, z0, [3, 0, 39], offsets, tau, seed))
            for name, (fast, reference) in checks.items():
                assert fast.shape == reference.shape, (variant, tau, seed, name)
                assert torch.equal(fast, reference), (
                    f"{name} of {variant} at tau {tau}, seed {seed}: max difference "
                    f"{(fast - reference).abs().max().item():.3g} from one model call per draw")
                compared += 1
            if variant != "iwae" and tau > 0:  # the comparison sees the weight draws: they change the images
                assert not torch.equal(checks["reconstructions"][0],
                                       explore.reconstructions(m, x[:n], draws, tau, seed + 1))
    assert compared == 3 * 4 * 5


def test_a_traversal_row_does_not_depend_on_the_other_units_asked_for():
    m = shipped_size_model("iwae-r")
    z0 = explore.prior_draw(40, seed=1)
    offsets = torch.linspace(-2, 2, 5)
    rows = explore.traversal(m, z0, [5, 1, 2], offsets, tau=1.0, seed=1)
    assert torch.equal(rows[1], explore.traversal(m, z0, [1], offsets, tau=1.0, seed=1)[0])
    assert not torch.equal(rows[0], rows[1])


def test_kept_sigmas_follow_changes_of_the_weights():
    """softplus(rho) is kept between views; an in-place change of rho (an optimiser step, a state dict loaded)
    or a new rho tensor must still show in the next view, equal to one model call per draw."""
    m = shipped_size_model("iwae-r")
    z = explore.latent_draws(40, 4, seed=3)
    before = explore.decoder_samples(m, z, 2, 1.0, seed=3)
    layer = m.decoder.layers[0]
    with torch.no_grad():
        layer.weight_rho.add_(1.0)
    moved = explore.decoder_samples(m, z, 2, 1.0, seed=3)
    assert not torch.equal(moved, before)
    assert torch.equal(moved, reference_decoder_samples(m, z, 2, 1.0, seed=3))
    m.load_state_dict(shipped_size_model("iwae-r").state_dict())  # copies the original rho back in place
    assert torch.equal(explore.decoder_samples(m, z, 2, 1.0, seed=3), before)
    layer.weight_rho = torch.nn.Parameter(layer.weight_rho.detach() - 1.0)  # a new tensor
    assert torch.equal(explore.decoder_samples(m, z, 2, 1.0, seed=3), reference_decoder_samples(m, z, 2, 1.0, 3))
    assert not torch.equal(explore.decoder_samples(m, z, 2, 1.0, seed=3), before)
