"""Shared fixtures: a zoo of tiny trained models in a temporary folder, for the dashboard tests, and a tiny
budget x seed study, for the tests of the study (tests/test_study.py) and of its results
(tests/test_study_results.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.train import Trainer

TINY_VARIANTS = ("iwae", "iwae-r", "iwae-rrec")


def synthetic_data(n: int = 300, seed: int = 0) -> dict:
    """Grey images with a random bright blob each: enough structure for a tiny model to learn something."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = 6 + 16 * torch.rand(n, 2, generator=gen)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    x = torch.exp(-d2 / 18).reshape(n, 784).clamp(0, 1)
    return {"train": x[:200], "valid": x[200:250], "test": x[250:], "source": "synthetic blobs"}


def train_tiny(out: Path, variant: str, steps: int = 30, seed: int = 0, dataset: str = "mnist") -> Path:
    """Train a 784-32-4 model of `variant` for `steps` steps on synthetic data into the model folder `out`.

    init_sigma is large (0.05) so the random networks' weight noise is visible in figures after few steps.
    """
    run = RunConfig(ModelConfig.for_variant(variant, hidden=(32,), z_dim=4, init_sigma=0.05),
                    TrainConfig(dataset=dataset, k=5, batch_size=20, epochs=3, max_steps=steps, seed=seed,
                                device="cpu", threads=1, eval_k=5, eval_images=50))
    trainer = Trainer(run, out=out, data=synthetic_data(seed=seed))
    trainer.fit()
    trainer.end_epoch()
    trainer.finish()
    return out


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """A folder holding tiny-iwae, tiny-iwae-r and tiny-iwae-rrec model folders (trained once per session)."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("zoo")
    try:
        for variant in TINY_VARIANTS:
            train_tiny(root / f"tiny-{variant}", variant)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The study's StudyConfig after run_study on MNIST: IWAE and the mixture IWAE-R, seeds 0 and 1, budgets of
    1 and 2 epochs, on tiny models and 200 training images (run once per session)."""
    from iwae_core.study import StudyConfig, run_study
    from support import require_data

    require_data("MNIST", "raw")
    root = tmp_path_factory.mktemp("study")
    cfg = StudyConfig(root=root / "runs", results=root / "results", datasets=("mnist",), seeds=(0, 1),
                      arms=("iwae", "iwae-r-mixture"),
                      budgets=(1, 2), hidden=(16,), z_dim=4, k=3, batch_size=50, train_images=200, images=30,
                      S=20, mixture_init_sigma=0.05, workers=2)
    run_study(cfg)  # on a local Ray of two CPUs, as the real study runs
    return cfg


@pytest.fixture
def no_logged_tracebacks(monkeypatch):
    """Fail the test when anything logs an exception or an error while it runs.

    Streamlit logs some problems instead of raising them (a dataframe Arrow cannot store is logged with its
    traceback at INFO level, then converted to text), so AppTest's `exception` list alone misses them."""
    import logging

    from streamlit import logger as st_logger

    seen: list[str] = []
    handle = logging.Logger.handle

    def recording_handle(self, record):
        if (record.exc_info and record.exc_info[0] is not None) or record.levelno >= logging.ERROR:
            cause = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] is not None else ""
            seen.append(f"{record.name}: {record.getMessage()}{cause}")
        return handle(self, record)

    monkeypatch.setattr(logging.Logger, "handle", recording_handle)
    level = st_logger._global_log_level
    st_logger.set_log_level("INFO")  # where Streamlit logs the traceback of an Arrow conversion it worked around
    yield seen
    st_logger.set_log_level(level)
    assert not seen, "logged during the test:\n" + "\n".join(seen)
