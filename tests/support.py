"""Helpers shared by the tests: where the real data is and whether torch.compile and the C++ kernels run (and
what to do when either is missing), a kernel's result on one thread against two, the dashboard opened in
Streamlit's AppTest, and the log weights of a deterministic model in closed form."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


def require_data(*parts: str) -> Path:
    """The data root from IWAE_DATA_DIR holding `parts`; a missing dataset fails in CI and skips elsewhere."""
    root = os.environ.get("IWAE_DATA_DIR")
    path = Path(root, *parts) if root else None
    if path is None or not path.exists():
        msg = f"real data not found: set IWAE_DATA_DIR to a folder holding {'/'.join(parts)} (got {root!r})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(root)


def require_native() -> None:
    """The package's C++ kernels built (iwae_core/maths/native.py): their absence fails in CI and skips elsewhere."""
    from iwae_core.maths import native

    try:
        native.load()
    except Exception as err:
        msg = f"the C++ kernels are not built here: {err}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def on_one_and_two_threads(f, x: torch.Tensor) -> torch.Tensor:
    """f(x) on two threads, asserted equal to f(x) on one (the package's kernels split their work between threads;
    for an odd size, the threads' ranges end inside a vector)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = f(x)
        torch.set_num_threads(1)
        assert torch.equal(f(x), two)
    finally:
        torch.set_num_threads(threads)
    return two


def require_compile() -> None:
    """torch.compile on this CPU (a C++ compiler, a supported torch): its absence fails in CI and skips elsewhere."""
    from iwae_core.compiled import compile_unavailable

    if why := compile_unavailable(torch.device("cpu")):
        msg = f"torch.compile cannot run here: {why}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


APP = Path(__file__).resolve().parent.parent / "app.py"


def open_app(page: str | None = None, timeout: float = 180, **params):
    """Run the app (home first, as a browser would), then switch to views/<page>; URL params set before."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(f"views/{page}").run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def closed_form_log_weights(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) of a deterministic-weight tanh model at z [k, batch, z_dim], with the
    Bernoulli and Gaussian densities written out (not the package's functions): [k, batch]."""
    h = x
    for i, layer in enumerate(model.encoder.layers):
        h = h @ layer.weight_mu.T + layer.bias_mu
        h = torch.tanh(h) if i < len(model.encoder.layers) - 1 else h
    mean, pre_std = h.chunk(2, dim=-1)
    std = F.softplus(pre_std) + 1e-6
    logits = z
    for i, layer in enumerate(model.decoder.layers):
        logits = logits @ layer.weight_mu.T + layer.bias_mu
        logits = torch.tanh(logits) if i < len(model.decoder.layers) - 1 else logits
    p = torch.sigmoid(logits)
    log_px = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * ((z - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_px + log_pz - log_qz
