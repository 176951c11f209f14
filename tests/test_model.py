"""The IWAE model: its log weights against log p(x|z) + log p(z) - log q(z|x) computed in closed form from the
z it returns, and L_1 as the ELBO from its parts."""

import torch

from iwae_core.config import ModelConfig
from iwae_core.model import IWAE
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
