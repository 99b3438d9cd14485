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


def test_ridge_is_chosen_by_leaving_materials_out() -> None:
    """The chosen ridge is the one whose fits without a material predict it best (checked by refitting
    without it); with no material that can be left out (each has an element of its own) it is the default."""
    from dftflow.ml.saed import DEFAULT_RIDGE, DEFAULT_WIDTHS, RIDGES

    rng = np.random.default_rng(1)
    truth = {"widths": list(DEFAULT_WIDTHS), "cutoff": 5.0,
             "coefficients": {str(z): rng.uniform(0, 1, len(DEFAULT_WIDTHS)).tolist() for z in (3, 6, 9, 14)}}

    def material(a: float, numbers: list[int]) -> dict:
        cell = np.eye(3) * a
        positions = np.array([[0.0, 0.0, 0.0], [a / 4, a / 4, a / 4]])
        points = rng.uniform(0, a, (300, 3))
        density = saed_at(points, cell, positions, np.array(numbers), truth) + rng.normal(0, 0.3, len(points))
        return {"cell": cell, "positions": positions, "numbers": np.array(numbers), "probe_positions": points,
                "density": density}

    items = [material(a, [14, 14]) for a in (5.2, 5.43, 5.7)] + [material(5.0, [14, 6])]
    saed = fit_saed(items)
    assert saed["ridge"] in RIDGES and set(saed["cv_eps_mae"]) == {f"{r:g}" for r in RIDGES}
    for ridge in (RIDGES[0], RIDGES[-1]):  # the reported scores are those of real refits
        errors = []
        for i in range(3):  # the Si+C material cannot be left out: it holds the only C
            rest = fit_saed(items[:i] + items[i + 1:], ridge=ridge)
            it = items[i]
            pred = saed_at(it["probe_positions"], it["cell"], it["positions"], it["numbers"], rest)
            errors.append(np.abs(pred - it["density"]).sum() / np.abs(it["density"]).sum())
        # (a refit scales its ridge by its own XᵀX, the cross-validation by the whole set's: close, not equal)
        assert saed["cv_eps_mae"][f"{ridge:g}"] == pytest.approx(np.mean(errors), rel=1e-3)
    assert saed["ridge"] == min(RIDGES, key=lambda r: saed["cv_eps_mae"][f"{r:g}"])
    lone = fit_saed([material(5.43, [14, 14]), material(5.0, [3, 9])])
    assert lone["ridge"] == DEFAULT_RIDGE and lone["cv_eps_mae"] is None
