"""Shared test fixtures: the real reference data in ../shared beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")


def shared_dir() -> Path | None:
    for candidate in (os.environ.get("DFTFLOW_SHARED"), REPO.parent / "shared", REPO / "shared"):
        if candidate and (Path(candidate) / "fixtures").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("reference data ../shared/fixtures not found beside the checkout")
    return path
