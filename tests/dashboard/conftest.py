"""Fixtures of the dashboard tests."""

from __future__ import annotations

import pytest

from tests.dashboard.cdp import Browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's package), one per test module."""
    b = Browser()
    yield b
    b.close()
