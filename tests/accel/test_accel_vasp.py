"""The VASP arms write exactly the starting inputs they claim, and run through custodian and the VASP double."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pymatgen.core import Structure
from pymatgen.io.vasp import Incar

from dftflow.accel.flows import vasp_accel_flow
from dftflow.accel.report import material_rows
from dftflow.accel.run import collect
from dftflow.density.chgcar import read_chgcar
from dftflow.execution.queue import JobQueue
from dftflow.execution.worker import flow_jobs, run_workers
from dftflow.vasp.outputs import oszicar_steps

STATIC = "fixtures/vasp/Si_mp_gga_relax/GGA_Static"


def test_vasp_arms_inputs_and_counts(shared: Path, tmp_path: Path, vasp_double, si_checkpoint: Path) -> None:
    env = vasp_double()
    structure = Structure.from_str(gzip.decompress((shared / STATIC / "inputs" / "POSCAR.gz").read_bytes()).decode(),
                                   fmt="poscar")
    root = tmp_path / "eval"
    queue = JobQueue(root / "jobs.sqlite")
    flow = vasp_accel_flow(structure, "Si", model=str(si_checkpoint), arms=("default", "ml", "ml-true-occ", "oracle"),
                           inputset="mp-static", nfixed=5)
    queue.add_flows([("Si", flow_jobs(flow))])
    queue.close()
    counts = run_workers(root / "jobs.sqlite", root, 1, env=env)
    assert counts["COMPLETED"] == 5, collect(root / "jobs.sqlite")[1]
    results, problems = collect(root / "jobs.sqlite")
    assert problems == []
    arms = {r["arm"]: r for r in results}

    # what the "VASP" of each arm found in its directory
    reads = {Path(r["dir"]).name.rsplit("-", 1)[0]: r
             for r in map(json.loads, (tmp_path / "double-state" / "reads.jsonl").read_text().splitlines())}
    reference = read_chgcar(shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz")
    ref_sizes = [len(block) for block in reference.augmentation["total"]]
    assert reads["accel_default"]["ICHARG"] == "2" and "chgcar_grid" not in reads["accel_default"]
    for arm in ("ml", "ml-true-occ", "oracle"):
        read = reads[f"accel_{arm}"]
        assert (read["ICHARG"], read["ISTART"], read["NELMDL"]) == ("1", "0", "-5"), arm
        assert read["chgcar_grid"] == list(reference.grid), arm
    assert reads["accel_ml"]["augmentation_sizes"] == []  # grid only: VASP starts the occupancies from atoms
    assert reads["accel_ml-true-occ"]["augmentation_sizes"] == ref_sizes
    assert reads["accel_oracle"]["augmentation_sizes"] == ref_sizes

    for arm, r in arms.items():
        if arm == "predict":
            continue
        incar = Incar.from_file(Path(r["dir"]) / "INCAR")
        assert incar["ISTART"] == 0 and incar["NELMDL"] == -5 and incar["ICHARG"] == (2 if arm == "default" else 1)
        assert incar["ENCUT"] == 520 and incar["EDIFF"] == 1e-4  # the input set, unchanged, in every arm
        # steps: OSZICAR's count (the replayed real run), the fixed ones split off
        assert r["steps"] == oszicar_steps(shared / STATIC / "outputs" / "OSZICAR.gz")[0]
        assert r["steps"] == r["steps_outcar"][0] and r["n_fixed"] == 5 and r["n_scf"] == r["steps"] - 5

    # the predicted CHGCARs hold NELECT electrons on the default's grid, and the true occupancies where claimed
    predicted = read_chgcar(arms["predict"]["chgcar"]["ml-true-occ"], nelect=8)
    assert predicted.grid == reference.grid and predicted.augmentation is not None
    for mine, theirs in zip(predicted.augmentation["total"], reference.augmentation["total"], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-7)
    assert read_chgcar(arms["predict"]["chgcar"]["ml"], nelect=8).augmentation is None
    [row] = material_rows(results)
    assert row["ratio_ml"] == row["ratio_oracle"] == 1.0  # the double replays one run for every arm
    assert row["inference_s"] > 0
