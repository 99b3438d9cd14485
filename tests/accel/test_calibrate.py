"""The correction factor chosen on validation runs: the best mean among the safe factors, or none."""

from __future__ import annotations

import pytest

from dftflow.accel.calibrate import choose_scale
from dftflow.accel.gpaw import arm_label, arm_scale


def rows(**ratios: list[float]) -> list[dict]:
    n = len(next(iter(ratios.values())))
    return [{f"ratio_ml@{k.replace('s', '').replace('_', '.')}": v[i] for k, v in ratios.items()} for i in range(n)]


def test_the_lowest_mean_among_factors_whose_worst_material_stays_within_the_bound() -> None:
    # 1.0 has the lowest mean but one material 30 % worse than the default; 0.5 is safe and saves
    data = rows(s0_5=[0.9, 0.95, 1.0], s1=[0.6, 0.7, 1.3])
    scale, table = choose_scale(data, [0.5, 1.0], max_ratio=1.1)
    assert scale == 0.5
    by = {t["scale"]: t for t in table}
    assert by[1.0]["worst"] == pytest.approx(1.3) and by[1.0]["worse_than_default"] == pytest.approx(1 / 3)
    assert by[0.5]["mean"] == pytest.approx(0.95)
    # a looser bound lets the better mean win
    assert choose_scale(data, [0.5, 1.0], max_ratio=1.5)[0] == 1.0


def test_no_factor_that_saves_safely_deploys_the_default_start() -> None:
    data = rows(s0_5=[1.0, 1.05], s1=[0.8, 1.4])
    assert choose_scale(data, [0.5, 1.0], max_ratio=1.1)[0] == 0.0


def test_scaled_arm_names() -> None:
    assert arm_scale("ml@0.5") == ("ml", 0.5) and arm_scale("oracle") == ("oracle", None)
    assert "× 0.5" in arm_label("ml@0.5")
    for bad in ("ml@x", "oracle@0.5", "ml@3"):
        with pytest.raises(ValueError):
            arm_scale(bad)
