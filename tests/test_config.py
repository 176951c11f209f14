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
