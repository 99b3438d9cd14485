"""DFT input sets (``inputsets/*.yaml``): declarative settings shared by the engines.

One written precedence order: input set < recipe < user overrides
(:func:`with_overrides`). The Hubbard U table (``inputsets/hubbard_u.yaml``) is
shared by the VASP and GPAW sets, so both engines apply the same U values.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.resources import resolve

# Elements whose d or f shells can carry a moment: a structure with any of them
# is run spin-polarised when ``spin: auto``.
MAGNETIC = frozenset(
    "Sc Ti V Cr Mn Fe Co Ni Cu Y Zr Nb Mo Tc Ru Rh Pd Hf Ta W Re Os Ir Pt "
    "Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb U Np Pu".split()
)


class Smearing(StrictModel):
    name: Literal["fermi-dirac", "marzari-vanderbilt", "methfessel-paxton"] = "fermi-dirac"
    width: float = Field(default=0.05, gt=0, description="eV")


class RelaxSettings(StrictModel):
    fmax: float = Field(default=0.05, gt=0, description="eV/Å")
    max_steps: int = Field(default=50, gt=0)
    cell: bool = Field(default=True, description="relax the cell as well as the positions")


class HubbardEntry(StrictModel):
    U: float = Field(ge=0, description="U in eV (LDAUU); Dudarev's scheme uses U - J")
    J: float = Field(default=0.0, ge=0, description="J in eV (LDAUJ)")
    orbital: Literal["d", "f"] | None = Field(default=None, description="shell with U (default: the table's)")
    source: str = ""
    ecd: float | None = Field(default=None, description="the value an ECD OUTCAR printed, where one did")

    @property
    def u_eff(self) -> float:
        return self.U - self.J


class HubbardTable(StrictModel):
    orbital: Literal["d", "f"] = "d"
    values: dict[str, HubbardEntry]

    def shell(self, element: str) -> Literal["d", "f"]:
        entry = self.values[element]
        return entry.orbital or self.orbital


class InputSet(StrictModel):
    """A plane-wave DFT calculation, independent of the engine where possible."""

    name: str
    engine: Literal["gpaw", "vasp"]
    calculation: Literal["static", "relax"]
    xc: str = "PBE"
    ecut: float = Field(gt=0, description="plane-wave cutoff, eV")
    kpoint_density: float = Field(gt=0, description="Å; n_i = max(1, round(density * |b_i|))")
    smearing: Smearing = Field(default_factory=Smearing)
    spin: Literal["auto", "on", "off"] = "auto"
    magmoms: dict[str, float] = Field(default_factory=lambda: {"default": 0.6})
    hubbard_u: str | None = Field(default=None, description="U table file, relative to this set")
    convergence: dict[str, float] = Field(default_factory=dict)
    maxiter: int = Field(default=200, gt=0)
    relax: RelaxSettings | None = None

    base_dir: Path = Field(default=Path("."), exclude=True)

    def hubbard(self) -> dict[str, float]:
        """U_eff = U - J per element (empty when the set uses no U)."""
        return {el: u for el, (_, u) in self.hubbard_shells().items()}

    def hubbard_shells(self) -> dict[str, tuple[str, float]]:
        """Element → (shell, U_eff) for every element with U_eff > 0."""
        if self.hubbard_u is None:
            return {}
        path = Path(self.hubbard_u)
        path = path if path.is_absolute() else self.base_dir / path
        return dict(_hubbard_shells(str(path), path.stat().st_mtime_ns if path.exists() else 0))

    def spin_polarized(self, symbols: list[str]) -> bool:
        if self.spin == "auto":
            return any(s in MAGNETIC for s in symbols)
        return self.spin == "on"

    def initial_magmoms(self, symbols: list[str]) -> list[float]:
        default = self.magmoms.get("default", 0.6)
        return [self.magmoms.get(s, default) for s in symbols]


def load_inputset(name_or_path: str | Path) -> InputSet:
    path = resolve("inputsets", name_or_path)
    inputset = load_yaml_model(path, InputSet)
    inputset.base_dir = path.parent
    return inputset


def with_overrides(inputset: InputSet, *overrides: dict[str, Any] | None) -> InputSet:
    """Apply recipe then user overrides (later wins), validated like the file itself."""
    data = inputset.model_dump()
    for layer in overrides:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    out = InputSet.model_validate(data)
    out.base_dir = inputset.base_dir
    return out


def kpoint_mesh(lattice: np.ndarray, density: float) -> tuple[int, int, int]:
    """Γ-centred mesh from a length density (VASP's fully automatic ``length`` rule)."""
    reciprocal = np.linalg.inv(np.asarray(lattice, dtype=float)).T  # rows b_i, no 2π
    lengths = np.linalg.norm(reciprocal, axis=1)
    return tuple(max(1, int(math.floor(density * b + 0.5))) for b in lengths)  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def _hubbard_shells(path: str, mtime_ns: int) -> tuple[tuple[str, tuple[str, float]], ...]:
    """A U table's element → (shell, U_eff), read once per file version (the table is ~100 entries of YAML)."""
    table = load_yaml_model(Path(path), HubbardTable)
    return tuple((el, (table.shell(el), round(e.u_eff, 6))) for el, e in table.values.items() if e.u_eff > 0)
