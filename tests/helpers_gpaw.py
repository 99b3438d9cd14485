"""The demo crystals and the cheap GPAW settings of the accel-eval tests."""

from __future__ import annotations

from pathlib import Path

from pymatgen.core import Structure

DEMO = Path(__file__).resolve().parents[1] / "workflows" / "structures" / "demo"
OVERRIDES = {"ecut": 300, "kpoint_density": 12}


def primitive(name: str) -> Structure:
    return Structure.from_file(DEMO / f"{name}.cif").get_primitive_structure()


def inputset():
    from dftflow.inputsets import load_inputset, with_overrides

    return with_overrides(load_inputset("gpaw_pbe_static"), OVERRIDES)
