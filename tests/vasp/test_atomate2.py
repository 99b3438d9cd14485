"""The dftflow input sets as atomate2 makers: same inputs as ``resolve_inputs``, run end to end by jobflow."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import atomate2  # noqa: F401 - a broken install fails here, not skips
import pytest
from pymatgen.core import Structure
from pymatgen.io.vasp import Incar, Kpoints, Poscar, Vasprun

from dftflow.vasp.atomate2 import (
    EcdHseStaticMaker,
    EcdInputGenerator,
    EcdRelaxMaker,
    EcdStaticMaker,
    ecd_atomate2_flow,
)
from dftflow.vasp.inputs import resolve_inputs
from dftflow.vasp.jobs import parse_run

MATERIALS = ["icsd-1611-O3Pb1Ti1", "icsd-163383-O1Zn1", "icsd-183198-Cd1N1", "icsd-99966-Fe10Si6"]
# (input set, the ECD run whose POSCAR it is given, ladder rung): the HSE rungs are those ECD ran on
CASES = [(m, "ecd-pbe-relax", "PBE", 0) for m in MATERIALS] + [(m, "ecd-pbe-static", "PBE", 0) for m in MATERIALS] \
    + [(m, "ecd-hse06-static", "HSE", r) for m, r in zip(MATERIALS, (0, 0, 1, 2))]
SI = "fixtures/vasp/Si_mp_gga_relax"


def ecd_poscar(shared: Path, material: str, functional: str) -> Structure:
    return Structure.from_file(shared / "fixtures" / "ecd_outcars" / f"{material}_{functional}" / "POSCAR")


@pytest.mark.parametrize(("material", "inputset", "functional", "rung"), CASES)
def test_the_generator_writes_what_resolve_inputs_gives(shared: Path, tmp_path: Path, material: str, inputset: str,
                                                        functional: str, rung: int) -> None:
    structure = ecd_poscar(shared, material, functional)
    expected = resolve_inputs(structure, inputset, rung=rung)
    EcdInputGenerator(inputset=inputset, rung=rung).get_input_set(structure, potcar_spec=True).write_input(tmp_path)
    assert Incar.from_file(tmp_path / "INCAR") == Incar(expected.incar)
    kpoints = Kpoints.from_file(tmp_path / "KPOINTS")
    assert [list(kpoints.kpts[0]), kpoints.style.name] == [expected.kpoints["mesh"], expected.kpoints["style"]]
    assert (tmp_path / "POTCAR.spec").read_text().split() == expected.potcar_symbols
    poscar = Poscar.from_file(tmp_path / "POSCAR")
    assert poscar.site_symbols == [s.split("_")[0] for s in expected.potcar_symbols]  # POSCAR order kept
    assert poscar.structure.lattice.abc == pytest.approx(structure.lattice.abc)


def test_the_makers_use_the_ecd_sets(shared: Path) -> None:
    structure = ecd_poscar(shared, "icsd-99966-Fe10Si6", "PBE")
    relax, static, hse = EcdRelaxMaker(), EcdStaticMaker(), EcdHseStaticMaker()
    assert [m.name for m in (relax, static, hse)] == ["ECD relax", "ECD static", "ECD HSE06 static"]
    static_incar = static.input_set_generator.get_input_set(structure, potcar_spec=True)["INCAR"]
    assert static_incar["LCHARG"] is True and static_incar["LDAU"] is True and static_incar["NSW"] == 0
    hse_incar = hse.input_set_generator.get_input_set(structure, potcar_spec=True)["INCAR"]
    assert hse_incar["LHFCALC"] is True and hse_incar["ICHARG"] == 1  # from the copied PBE CHGCAR
    assert hse.copy_vasp_kwargs["additional_vasp_files"] == ("CHGCAR",)
    assert relax.input_set_generator.get_input_set(structure, potcar_spec=True)["INCAR"]["ISIF"] == 3
    # user INCAR settings are the last layer, None removes a tag (atomate2's powerups set them)
    gen = EcdInputGenerator(inputset="ecd-pbe-static", user_incar_settings={"ENCUT": 600, "LORBIT": None})
    incar = gen.get_input_set(structure, potcar_spec=True)["INCAR"]
    assert incar["ENCUT"] == 600 and "LORBIT" not in incar
    with pytest.raises(ValueError, match="fixes the POTCARs"):
        EcdInputGenerator(user_potcar_settings={"Fe": "Fe_pv"})


def test_an_mp_set_keeps_poscar_and_potcar_in_one_order() -> None:
    """pymatgen's MP sets order the POTCARs by electronegativity; the POSCAR must follow (ECD sets keep the order)."""
    from pymatgen.core import Lattice

    rocksalt = Structure(Lattice.cubic(4.3), ["O", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    mp = EcdInputGenerator(inputset="mp-static").get_input_set(rocksalt, potcar_spec=True)
    assert mp["POSCAR"].site_symbols == ["Fe", "O"] and mp["POTCAR.spec"].split() == ["Fe_pv", "O"]
    assert mp["INCAR"]["LDAUU"] == [5.3, 0]
    ecd = EcdInputGenerator(inputset="ecd-pbe-static").get_input_set(rocksalt, potcar_spec=True)
    assert ecd["POSCAR"].site_symbols == ["O", "Fe"] and ecd["POTCAR.spec"].split() == ["O", "Fe"]
    assert ecd["INCAR"]["LDAUU"] == resolve_inputs(rocksalt, "ecd-pbe-static").incar["LDAUU"]


def test_a_maker_survives_serialisation() -> None:
    from monty.json import MontyDecoder

    maker = EcdHseStaticMaker(input_set_generator=EcdInputGenerator(inputset="ecd-hse06-static", rung=1))
    back = MontyDecoder().process_decoded(json.loads(json.dumps(maker.as_dict())))
    assert isinstance(back.input_set_generator, EcdInputGenerator)
    assert (back.input_set_generator.inputset, back.input_set_generator.rung) == ("ecd-hse06-static", 1)


def test_the_previous_runs_magnetisation_carries_over_as_in_dftflow(shared: Path, tmp_path: Path) -> None:
    for name in ("vasprun.xml.gz", "OUTCAR.gz"):
        (tmp_path / name[:-3]).write_bytes(gzip.decompress((shared / SI / "GGA_Relax_2" / "outputs" / name)
                                                           .read_bytes()))
    prev = parse_run(tmp_path)
    structure = Structure.from_dict(prev["structure"])
    expected = resolve_inputs(structure, "ecd-pbe-static",
                              previous={"magnetization": prev["magnetization"], "magmoms": prev["magmoms"]})
    vis = EcdInputGenerator(inputset="ecd-pbe-static").get_input_set(structure, prev_dir=tmp_path, potcar_spec=True)
    assert dict(vis["INCAR"]) == expected.incar
    assert vis["INCAR"]["ISPIN"] == 1  # the spin-polarised relax of Si ended without moments


def test_relax_static_and_chgcar_restart_through_atomate2(shared: Path, tmp_path: Path, vasp_double) -> None:
    """relax → static → a third static from the static's CHGCAR, by atomate2 and custodian, on the Si reference.

    The double has Materials Project references, so the makers get the mp sets; the third job is the
    HSE06 maker with the Si static's settings and ICHARG 1 (no HSE reference run has a KPOINTS file):
    what it tests is atomate2 copying the CHGCAR that VASP then reads.
    """
    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore

    env = vasp_double()
    command = json.loads(env["DFTFLOW_VASP_COMMANDS"])["vasp_std"]
    kwargs = {"write_input_set_kwargs": {"potcar_spec": True}, "run_vasp_kwargs": {"vasp_cmd": command}}
    structure = Structure.from_str(gzip.decompress((shared / SI / "GGA_Relax_1" / "inputs" / "POSCAR.gz")
                                                   .read_bytes()).decode(), fmt="poscar")
    flow = ecd_atomate2_flow(
        structure, hse=True,
        relax_maker=EcdRelaxMaker(input_set_generator=EcdInputGenerator(inputset="mp-relax"), **kwargs),
        static_maker=EcdStaticMaker(input_set_generator=EcdInputGenerator(inputset="mp-static"), **kwargs),
        hse_maker=EcdHseStaticMaker(input_set_generator=EcdInputGenerator(
            inputset="mp-static", user_incar_settings={"ICHARG": 1}), **kwargs))
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    responses = run_locally(flow, store=store, create_folders=True, root_dir=tmp_path / "run", ensure_success=True,
                            log=False)
    relax, static, restart = (responses[j.uuid][1].output for j in flow.jobs)
    assert [d.task_label for d in (relax, static, restart)] == ["ECD relax", "ECD static", "ECD HSE06 static"]
    assert all(d.state == "successful" for d in (relax, static, restart))

    def reference(name: str) -> Vasprun:
        return Vasprun(str(shared / SI / name / "outputs" / "vasprun.xml.gz"), parse_dos=False, parse_eigen=False,
                       parse_potcar_file=False)

    assert relax.output.energy == pytest.approx(reference("GGA_Relax_1").final_energy)
    assert static.output.energy == pytest.approx(reference("GGA_Static").final_energy)
    assert relax.output.structure.lattice.abc == pytest.approx(reference("GGA_Relax_1").final_structure.lattice.abc)
    static_dir = Path(static.dir_name.split(":", 1)[-1])
    assert (static_dir / "CHGCAR.gz").stat().st_size > 1000  # the replayed 40³ density, gzipped by atomate2
    reads = [json.loads(line) for line in (tmp_path / "double-state" / "reads.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in reads] == ["GGA_Relax_1", "GGA_Static", "GGA_Static"]
    # VASP (the double) read a whole CHGCAR in the third job: the static's, copied by atomate2
    assert reads[2]["ICHARG"] == "1" and reads[2]["chgcar_grid"] == [40, 40, 40]
    assert reads[2]["dir"] == restart.dir_name.split(":", 1)[-1]
    written = Incar.from_str(gzip.decompress((Path(reads[2]["dir"]) / "INCAR.gz").read_bytes()).decode())
    assert written["ICHARG"] == 1 and written["NSW"] == 0
