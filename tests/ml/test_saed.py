"""The fitted atomic-density baseline for elements it has and has not seen."""

from __future__ import annotations

import numpy as np
import pytest

from dftflow.ml.saed import fit_saed, saed_at


def test_unseen_elements_contribute_nothing_with_a_warning() -> None:
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 5.43
    positions = np.array([[0.0, 0.0, 0.0], [1.3575, 1.3575, 1.3575]])
    points = rng.uniform(0, 5.43, (400, 3))
    # a made-up density made of Gaussians on the Si atoms, fitted back
    density = sum(np.exp(-np.sum((points - p) ** 2, axis=1) / 0.5) for p in positions)
    saed = fit_saed([{"cell": cell, "positions": positions, "numbers": np.array([14, 14]),
                      "probe_positions": points, "density": density}])
    only_si = saed_at(points, cell, positions[:1], np.array([14]), saed)
    with pytest.warns(UserWarning, match=r"Z=\[6\]"):
        mixed = saed_at(points, cell, positions, np.array([14, 6]), saed)
    np.testing.assert_allclose(mixed, only_si)
    with pytest.warns(UserWarning):
        assert not saed_at(points, cell, positions, np.array([6, 6]), saed).any()
