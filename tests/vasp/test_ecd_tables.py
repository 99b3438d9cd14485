"""The ECD tables cover every element: PBE.54 POTCARs with pymatgen's ZVAL, AFLOW's U, LMAXMIX, the HSE06 +U rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pymatgen.core import Element, Lattice, Structure
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.resources import resolve
from dftflow.vasp.inputs import resolve_inputs, valence_electrons, zval


def _stats(functional: str) -> dict:
    from pymatgen.io.vasp.inputs import _load_potcar_summary_stats

    return _load_potcar_summary_stats()[functional]


def _potcar_table() -> dict:
    return yaml.safe_load(resolve("inputsets", "potcars_vasp_recommended.yaml").read_text())


def _library_elements(functional: str) -> set[str]:
    names = {e.symbol for e in Element}
    return {entry["symbol"].split("_")[0].split(".")[0] for titles in _stats(functional).values() for entry in titles
            if entry["symbol"].split("_")[0].split(".")[0] in names}


def test_every_element_of_pbe54_has_a_potcar_of_that_library() -> None:
    table = _potcar_table()
    assert table["functional"] == "PBE_54"
    symbols = table["symbols"]
    library = _library_elements("PBE_54")
    assert library - set(symbols) == set()
    assert {"Am", "Cm", "Cf", "La", "Lu", "Ac", "Pu"} <= set(symbols)
    have = {entry["symbol"] for titles in _stats("PBE_54").values() for entry in titles}
    assert [s for s in symbols.values() if s not in have] == []
    # ECD's fixture OUTCARs: VASP's recommended choices, not MP's (Ti_pv, Fe_pv)
    assert [symbols[e] for e in ("Ti", "Fe", "Zn", "Cd", "Pb", "O", "N", "Si")] == [
        "Ti_sv", "Fe", "Zn", "Cd", "Pb_d", "O", "N", "Si"]


@pytest.mark.parametrize("potcar", sorted(set(_potcar_table()["symbols"].values())))
def test_zval_is_pymatgens_metadata(potcar: str) -> None:
    """ZVAL of every POTCAR the ECD sets use equals pymatgen's POTCAR metadata (PBE_54, all stored versions)."""
    values = {round(entry["ZVAL"], 6) for titles in _stats("PBE_54").values() for entry in titles
              if entry["symbol"] == potcar}
    assert len(values) == 1, values
    assert zval(potcar, "PBE_54") == int(values.pop())


def _every_element() -> Structure:
    elements = sorted(_potcar_table()["symbols"], key=lambda e: Element(e).Z)
    n = int(np.ceil(len(elements) ** (1 / 3)))
    grid = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)][: len(elements)]
    return Structure(Lattice.cubic(3.0 * n), elements, np.array(grid) / n)


def test_inputs_show_succeeds_on_every_element_of_the_potcar_table(tmp_path: Path) -> None:
    structure = _every_element()
    path = tmp_path / "POSCAR"
    structure.to(filename=str(path), fmt="poscar")
    for name in ("ecd-pbe-static", "ecd-hse06-static", "ecd-pbe-relax"):
        res = CliRunner().invoke(app, ["inputs", "show", str(path), "--set", name, "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.output)
        assert len(data["potcar_symbols"]) == len(structure) == len(_potcar_table()["symbols"])
        assert data["incar"]["LMAXMIX"] == 6  # f elements with U (La, Ce, ..., U)
        ldaul = dict(zip(data["species"], data["incar"]["LDAUL"]))
        assert ldaul["Gd"] == 3 and ldaul["Fe"] == 2 and ldaul["Pm"] == -1 and ldaul["Y"] == -1 and ldaul["Pb"] == -1
    assert valence_electrons(structure) == sum(zval(s, "PBE_54") for s in _potcar_table()["symbols"].values())


def _incar(formula: list[str], name: str = "ecd-pbe-static", rung: int = 0, a: float = 4.4) -> dict:
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0]][: len(formula)]
    return resolve_inputs(Structure(Lattice.cubic(a), formula, coords), name, rung=rung).incar


def test_aflow_u_values_and_lmaxmix_follow_the_shell_with_u() -> None:
    # d elements: AFLOW's values where MP's differ (Co 3.32, Mo 4.38, W 6.2 in MP)
    for element, u in (("Co", 5.0), ("Mo", 2.4), ("W", 2.2), ("Ni", 5.1), ("Ti", 4.4), ("Cd", 2.1)):
        incar = _incar([element, "S"])  # any anion: U does not depend on it
        assert incar["LDAUU"] == [u, 0.0] and incar["LDAUL"] == [2, -1] and incar["LMAXMIX"] == 4, element
    gd = _incar(["Gd", "O"])  # f shell, U and J as AFLOW writes them
    assert gd["LDAUL"] == [3, -1] and gd["LDAUU"] == [6.7, 0.0] and gd["LDAUJ"] == [0.7, 0.0] and gd["LMAXMIX"] == 6
    for no_u in (["Y", "O"], ["Zr", "O"], ["Pm", "O"], ["Hf", "N"], ["Np", "O"], ["Pb", "S"]):
        incar = _incar(no_u)
        assert "LDAU" not in incar and "LMAXMIX" not in incar, no_u  # VASP's default LMAXMIX (2)
    mixed = _incar(["Ce", "Fe", "O"])  # the highest shell with U decides
    assert mixed["LDAUL"] == [3, 2, -1] and mixed["LMAXMIX"] == 6


def test_hse06_keeps_u_only_when_spin_polarised_and_not_on_the_loose_rung() -> None:
    closed = _incar(["Zn", "O"], "ecd-hse06-static")  # ZnO: ISPIN 1, no U, LMAXMIX 2
    assert closed.get("ISPIN", 1) == 1 and "LDAU" not in closed and "LMAXMIX" not in closed
    odd = _incar(["Cd", "N"], "ecd-hse06-static", rung=1)  # CdN: 17 electrons, spin-polarised, keeps U
    assert odd["ISPIN"] == 2 and odd["LDAUU"] == [2.1, 0.0] and odd["LMAXMIX"] == 4
    magnetic = _incar(["Fe", "Si"], "ecd-hse06-static")
    assert magnetic["ISPIN"] == 2 and magnetic["LDAUU"] == [4.6, 0.0]
    loose = _incar(["Fe", "Si"], "ecd-hse06-static", rung=2)  # Fe10Si6's rung: no U, LMAXMIX 2
    assert loose["ISPIN"] == 2 and "LDAU" not in loose and "LMAXMIX" not in loose
