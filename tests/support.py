"""Helpers shared by the engine tests: where the real data is, and what to do when it is missing."""

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
