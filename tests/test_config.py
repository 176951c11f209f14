"""Settings (iwae_core/config.py): absurd values are refused by name where they enter, and config.json files
written before an option existed read with the behaviour they were trained with."""

import json

import pytest
import torch

from iwae_core.config import ModelConfig, RunConfig, TrainConfig, check_k
from iwae_core.maths.model import IWAE


@pytest.mark.parametrize("k", [0, -3, 10**9, 2.5, True])
def test_absurd_k_is_rejected_by_name(k):
    """k is checked where it enters (the configs, evaluate's and curves' public functions), not by every
    log_weights call."""
    from iwae_core import curves, evaluate

    with pytest.raises(ValueError, match="k"):
        check_k(k)
    with pytest.raises(ValueError, match="^k"):
        TrainConfig(k=k)
    with pytest.raises(ValueError, match="^eval_k"):
        TrainConfig(eval_k=k)
    model, x = IWAE(ModelConfig(hidden=(4,), z_dim=2)), torch.zeros(2, 784)
    with pytest.raises(ValueError, match="^S"):
        evaluate.log_likelihood(model, x, S=k)
    with pytest.raises(ValueError, match="^S"):
        evaluate.log_likelihood_range(model, x, S=k)
    for edge in (curves.bound_vs_k, curves.grouped_bounds):
        with pytest.raises(ValueError, match="^k"):
            edge(model, x, [5, k])
    with pytest.raises(ValueError, match="^k"):
        curves.importance_weights(model, x[0], k)


def test_noise_precision_defaults_to_auto_and_old_configs_read_as_float32():
    assert TrainConfig().noise_precision == "auto"
    d = json.loads(RunConfig().to_json())
    assert d["train"]["noise_precision"] == "auto"
    del d["train"]["noise_precision"]  # a config.json written before the option existed
    assert RunConfig.from_json(json.dumps(d)).train.noise_precision == "float32"
    with pytest.raises(ValueError, match="noise_precision"):
        TrainConfig(noise_precision="float16")


def test_draws_default_to_philox_and_old_configs_draw_with_torch_exactly_as_before():
    assert ModelConfig().draws == "philox"
    d = json.loads(RunConfig(model=ModelConfig.for_variant("iwae-r", hidden=(8,), z_dim=3)).to_json())
    assert d["model"]["draws"] == "philox" and RunConfig.from_json(json.dumps(d)).model.draws == "philox"
    del d["model"]["draws"]  # a model saved before the option existed
    old = RunConfig.from_json(json.dumps(d))
    assert old.model.draws == "torch"
    with pytest.raises(ValueError, match="draws"):
        ModelConfig(draws="mt19937")
    # such a model draws with torch.randn and torch.randint as the code before philox did: its call moves torch's
    # stream exactly as those draws, replayed by hand in the model's order, do
    model = IWAE(old.model)
    assert {m.draws for m in model.modules() if hasattr(m, "draws")} == {"torch"}
    x = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    model.log_weights(x, 2)
    after_model = torch.get_rng_state()
    torch.manual_seed(5)
    torch.randn(2, 3, 8), torch.randn(2, 3, 6)  # the encoder's layers (local reparameterisation)
    torch.randn(2, 3, 3)  # eps
    for n_in, n_out in ((3, 8), (8, 784)):  # the decoder's layers (Flipout): weight noise, signs, bias noise
        torch.randn(n_out, n_in), torch.randint(0, 2, (1, 3, n_in)), torch.randint(0, 2, (1, 3, n_out))
        torch.randn(1, 3, n_out)
    assert torch.equal(torch.get_rng_state(), after_model)
    torch.manual_seed(5)
    model.set_draws("philox")
    model.log_weights(x, 2)
    assert not torch.equal(torch.get_rng_state(), after_model)  # philox: one key per draw
