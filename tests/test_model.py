"""The IWAE model (iwae_core/maths/model.py): its log weights against log p(x|z) + log p(z) - log q(z|x) computed in
closed form from the z it returns, L_1 as the ELBO from its parts, and L_k rising with k."""

import pytest
import torch

from iwae_core.config import ModelConfig
from iwae_core.maths import rng
from iwae_core.maths.bounds import iwae_bound
from iwae_core.maths.model import IWAE
from support import closed_form_log_weights


def test_returned_z_are_the_draws_the_log_weights_were_computed_at():
    torch.manual_seed(0)
    model = IWAE(ModelConfig(x_dim=20, hidden=(8,), z_dim=3)).double()
    x = torch.bernoulli(torch.full((4, 20), 0.4, dtype=torch.float64))
    torch.manual_seed(1)
    log_w, z = model.log_weights(x, 6, return_z=True)
    assert log_w.shape == (6, 4) and z.shape == (6, 4, 3)
    torch.testing.assert_close(log_w, closed_form_log_weights(model, x, z), rtol=0, atol=1e-9)
    torch.manual_seed(1)  # asking for z changes neither the draws nor the weights
    assert torch.equal(model.log_weights(x, 6), log_w)


def test_return_z_leaves_the_draws_of_random_weights_unchanged():
    torch.manual_seed(0)
    model = IWAE(ModelConfig.for_variant("iwae-r", x_dim=20, hidden=(8,), z_dim=3, init_sigma=0.1))
    x = torch.bernoulli(torch.full((4, 20), 0.4))
    torch.manual_seed(2)
    log_w, z = model.log_weights(x, 5, return_z=True)
    after = torch.get_rng_state()
    torch.manual_seed(2)
    assert torch.equal(model.log_weights(x, 5), log_w) and torch.equal(torch.get_rng_state(), after)
    assert z.shape == (5, 4, 3)


@pytest.mark.parametrize("variant", ["iwae", "iwae-r"])
def test_l1_equals_elbo_from_its_parts(variant):
    """L_1 = log p(x|z) + log p(z) - log q(z|x) for the same z: recompute each part with torch.distributions."""
    torch.manual_seed(0)
    cfg = ModelConfig.for_variant(variant, x_dim=20, hidden=(8,), z_dim=3, init_sigma=0.05)
    model = IWAE(cfg)
    x = torch.bernoulli(torch.full((5, 20), 0.4))
    torch.manual_seed(1)
    l1 = iwae_bound(model.log_weights(x, 1, encoder_granularity="batch", decoder_granularity="batch"))
    # Replay the same random draws: encoder weights, eps, decoder weights, in the order log_weights uses them.
    torch.manual_seed(1)
    mean, std = model.encode(x, 1, granularity="batch")
    z = mean + std * rng.randn(1, 5, 3)
    logits = model.decode(z, granularity="batch")
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    assert torch.allclose(l1, (log_px + log_pz - log_qz)[0], atol=1e-4)


def test_bound_increases_with_k_on_average():
    torch.manual_seed(0)
    model = IWAE(ModelConfig(x_dim=30, hidden=(16,), z_dim=4))
    x = torch.bernoulli(torch.full((200, 30), 0.3))
    means = [iwae_bound(model.log_weights(x, k)).mean().item() for k in (1, 5, 50)]
    assert means[0] < means[1] < means[2]
