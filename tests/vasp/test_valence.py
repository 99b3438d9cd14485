"""Valence electrons (ZVAL) from pymatgen's POTCAR summary data, the count `dftflow predict --nelect auto` uses."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from dftflow.errors import ConfigError
from dftflow.vasp.inputs import valence_electrons, zval


@pytest.mark.parametrize("functional", ["PBE", "PBE_54", "PBE_64"])
@pytest.mark.parametrize(("potcar", "expected"), [("Gd_3", 9), ("Tm_3", 9), ("Lu_3", 9), ("Fe_pv", 14), ("O", 6),
                                                  ("Si", 4), ("Tc_pv", 13), ("Li_sv", 3), ("Eu_2", 8)])
def test_zval_of_paw_datasets(potcar: str, expected: int, functional: str) -> None:
    assert zval(potcar, functional) == expected


def test_unknown_potcar_or_library_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"'Fe_zz': not in the PBE_54 library \(it has .*Fe_pv"):
        zval("Fe_zz", "PBE_54")
    with pytest.raises(ConfigError, match="'Xx': not in the PBE library"):
        zval("Xx")
    with pytest.raises(ConfigError, match="functional 'PBE_99': unknown"):
        zval("Fe", "PBE_99")


def test_valence_electrons_of_input_sets() -> None:
    """ECD sets count with VASP's recommended datasets (Gd_3, Lu_3, Fe, O), MP sets with pymatgen's (Gd, Fe_pv)."""
    s = Structure(Lattice.cubic(5.0), ["Gd", "Lu", "Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0.5, 0], [0.5, 0, 0]])
    assert valence_electrons(s) == 9 + 9 + 8 + 6
    assert valence_electrons(s, "mp-static") == 18 + 9 + 14 + 6
    tc = Structure(Lattice.hexagonal(2.74, 4.40), ["Tc", "Tc"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    assert valence_electrons(tc) == 26  # Tc_pv
