"""The dftflow input sets inside atomate2: an input generator, three job makers and a flow.

atomate2 users get the ECD calculations (PBE+U relax → PBE+U static with
CHGCAR → HSE06 static from the PBE density) as ordinary atomate2 makers::

    from jobflow import run_locally
    from dftflow.vasp.atomate2 import ecd_atomate2_flow

    run_locally(ecd_atomate2_flow(structure, hse=True), create_folders=True)

Every INCAR tag, the k-point mesh and the POTCAR symbols come from
:func:`dftflow.vasp.inputs.resolve_inputs`, so these jobs write exactly what
``dftflow inputs show`` prints; atomate2 supplies the rest (file copying,
custodian, the ``TaskDoc``). The VASP command, custodian handlers and POTCAR
library are atomate2's settings (``ATOMATE2_VASP_CMD``, ``run_vasp_kwargs``,
``PMG_VASP_PSP_DIR``), not dftflow's.

What dftflow's own makers (:mod:`dftflow.vasp.jobs`) do and these do not:
climbing an input set's fallback ladder when custodian gives up (pick a rung
by hand with ``EcdInputGenerator.rung``), continuing an interrupted relaxation
from its CONTCAR, and the walltime margin of dftflow's SLURM launcher.

This is the only dftflow module that imports atomate2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atomate2.vasp.jobs.base import BaseVaspMaker
from atomate2.vasp.sets.base import VaspInputGenerator
from jobflow import Flow
from pymatgen.io.vasp import Incar, Kpoints
from pymatgen.io.vasp.sets import VaspInputSet as PymatgenVaspInputSet

from dftflow.vasp.inputs import VaspInputs, load_vasp_inputset, resolve_inputs

if TYPE_CHECKING:
    from pymatgen.core import Structure


@dataclass
class EcdInputGenerator(VaspInputGenerator):
    """An atomate2 input generator that writes a dftflow input set (``inputsets/<name>.yaml``).

    INCAR, KPOINTS and the POTCAR symbols are those of
    :func:`~dftflow.vasp.inputs.resolve_inputs`; the POSCAR is the structure in
    the order it is given (MP sets: sorted, see ``sort_structure``). Of
    atomate2's generator fields only these act:

    - ``user_incar_settings``: the user's INCAR layer, applied last
      (``None`` removes a tag), so atomate2's ``update_user_incar_settings``
      powerup works;
    - ``user_kpoints_settings``: when given, pymatgen's k-point rules replace
      the set's mesh;
    - ``sort_structure``: ``None`` sorts only for the Materials Project family,
      whose pymatgen sets order the POTCARs by electronegativity.

    The ``auto_*`` switches, ``inherit_incar`` and the site magmoms of the
    structure are ignored: the set decides ISMEAR, ISPIN and MAGMOM. From a
    previous run (``prev_dir``) the total and per-site magnetisation of its
    OUTCAR carry over, as in dftflow's flows (ISPIN 1 when the moments are gone,
    the relaxed moments as MAGMOM otherwise); its INCAR, and with it any
    custodian correction, does not.

    Parameters
    ----------
    inputset
        A dftflow input set: a name in ``inputsets/`` or a path to a YAML file.
    rung
        The rung of the set's fallback ladder (0: the set as written).
    """

    inputset: str = "ecd-pbe-static"
    rung: int = 0
    config_dict: dict = field(default_factory=lambda: {"INCAR": {}, "KPOINTS": {}, "POTCAR": {}})
    sort_structure: bool | None = None
    validate_magmom: bool = False

    # atomate2's generator declares ``structure`` as a plain dataclass field, which hides pymatgen's
    # property of that name and with it ``sort_structure``; restored here, so that the POSCAR order of
    # an MP set is the order of its POTCARs and LDAU lists.
    structure = PymatgenVaspInputSet.structure

    def __post_init__(self) -> None:
        iset = load_vasp_inputset(self.inputset)  # an unknown name fails here, not inside a job
        if self.user_potcar_settings:
            raise ValueError(f"{iset.name}: the input set fixes the POTCARs; user_potcar_settings "
                             f"{self.user_potcar_settings} would be ignored (write a new input set instead)")
        if self.sort_structure is None:
            self.sort_structure = iset.family == "mp"
        self.config_dict = {**self.config_dict, "POTCAR_FUNCTIONAL": _potcar_functional(iset)}
        super().__post_init__()

    def resolve(self) -> VaspInputs:
        """The dftflow resolution of the set for the current structure (and previous run, if any)."""
        if self.structure is None:
            raise RuntimeError(f"{self.inputset}: no structure is associated with the input set")
        return resolve_inputs(self.structure, self.inputset, rung=self.rung,
                              overrides=[dict(self.user_incar_settings)], previous=self._previous())

    def _previous(self) -> dict[str, Any] | None:
        outcar = self.prev_outcar
        if outcar is None:
            return None
        magmoms = [float(m.get("tot", 0.0)) for m in (outcar.magnetization or [])]
        total = float(outcar.total_mag) if outcar.total_mag is not None else 0.0
        return {"magnetization": total, "magmoms": magmoms or None}

    @property
    def incar(self) -> Incar:
        return Incar(self.resolve().incar)

    @property
    def kpoints(self) -> Kpoints:
        if self.user_kpoints_settings:
            return super().kpoints
        kp = self.resolve().kpoints
        mesh = tuple(kp["mesh"])
        if kp["style"].lower().startswith("m"):
            return Kpoints.monkhorst_automatic(mesh)
        return Kpoints.gamma_automatic(mesh)

    @property
    def potcar_symbols(self) -> list[str]:
        return self.resolve().potcar_symbols


def _potcar_functional(iset: Any) -> str:
    """The PAW library: the ECD runs used PAW_PBE (the 2000-2005 datasets); the MP sets name theirs."""
    if iset.family == "mp":
        from pymatgen.io.vasp import sets

        return getattr(sets, iset.pymatgen_set or "", sets.MPRelaxSet).CONFIG.get("POTCAR_FUNCTIONAL", "PBE")
    return "PBE"


@dataclass
class EcdRelaxMaker(BaseVaspMaker):
    """ECD PBE+U relaxation of cell and ions (``ecd-pbe-relax``)."""

    name: str = "ECD relax"
    input_set_generator: VaspInputGenerator = field(
        default_factory=lambda: EcdInputGenerator(inputset="ecd-pbe-relax"))


@dataclass
class EcdStaticMaker(BaseVaspMaker):
    """ECD PBE+U static that writes the CHGCAR (with its augmentation occupancies), ``ecd-pbe-static``."""

    name: str = "ECD static"
    input_set_generator: VaspInputGenerator = field(
        default_factory=lambda: EcdInputGenerator(inputset="ecd-pbe-static"))


@dataclass
class EcdHseStaticMaker(BaseVaspMaker):
    """ECD HSE06 static started from the previous run's CHGCAR (``ecd-hse06-static``: ICHARG 1).

    Give it ``prev_dir``: the CHGCAR is copied from there with the other outputs.
    """

    name: str = "ECD HSE06 static"
    input_set_generator: VaspInputGenerator = field(
        default_factory=lambda: EcdInputGenerator(inputset="ecd-hse06-static"))
    copy_vasp_kwargs: dict = field(default_factory=lambda: {"additional_vasp_files": ("CHGCAR",)})


def ecd_atomate2_flow(structure: Structure, hse: bool = False, *, relax_maker: BaseVaspMaker | None = None,
                      static_maker: BaseVaspMaker | None = None,
                      hse_maker: BaseVaspMaker | None = None) -> Flow:
    """relax → static (→ HSE06 static from the static's CHGCAR), each job in its own directory.

    Each job gets the previous one's output structure and directory (``prev_dir``),
    as atomate2's flows do. The makers default to the ECD ones.
    """
    relax = (relax_maker or EcdRelaxMaker()).make(structure)
    static = (static_maker or EcdStaticMaker()).make(relax.output.structure, prev_dir=relax.output.dir_name)
    jobs = [relax, static]
    if hse:
        jobs.append((hse_maker or EcdHseStaticMaker()).make(static.output.structure,
                                                            prev_dir=static.output.dir_name))
    return Flow(jobs, output=jobs[-1].output, name="ECD relax → static" + (" → HSE06" if hse else ""))
