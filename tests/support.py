"""Helpers shared by the tests: where the real data is (and what to do when it is missing), and the
dashboard opened in Streamlit's AppTest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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


APP = Path(__file__).resolve().parent.parent / "app.py"


def open_app(page: str | None = None, timeout: float = 180, **params):
    """Run the app (home first, as a browser would), then switch to pages/<page>; URL params set before."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(f"pages/{page}").run()
        assert not at.exception, [e.value for e in at.exception]
    return at
