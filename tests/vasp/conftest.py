"""The VASP test double, configured per test against the real runs in ../shared/fixtures/vasp."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

DOUBLE = Path(__file__).resolve().parents[1] / "vasp_double" / "vasp_std"


@pytest.fixture()
def vasp_double(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Returns ``configure(**extra) -> env``; ``vasp_std`` then runs the double on the Si relax → static chain."""
    base = shared / "fixtures" / "vasp" / "Si_mp_gga_relax"

    def configure(**extra) -> dict[str, str]:
        config = {
            "references": [
                {"dir": str(base / "GGA_Relax_1"), "match": {"NSW": 99}},
                {"dir": str(base / "GGA_Relax_2"), "match": {"NSW": 99}},
                {"dir": str(base / "GGA_Static"), "match": {"NSW": 0}, "tolerance": 0.01,
                 "chgcar": str(shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz")},
            ],
            "state": str(tmp_path / "double-state"),
            **extra,
        }
        path = tmp_path / "double.json"
        path.write_text(json.dumps(config))
        env = {"DFTFLOW_VASP_DOUBLE": str(path),
               "DFTFLOW_VASP_COMMANDS": json.dumps({"vasp_std": f"{sys.executable} {DOUBLE}"})}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    return configure
