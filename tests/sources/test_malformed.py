"""Malformed input is recorded with its reason and never stops the import.

Runs :func:`dftflow.screening.stages.run_import` on sources that mix good files
with truncated, empty, misnamed, unreadable, pathologically slow and damaged
ones, and checks :func:`dftflow.parallel.run_tasks` on tasks that raise, run
over time or kill their worker process.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dftflow.catalog import Catalog
from dftflow.config.recipe import Recipe
from dftflow.parallel import run_tasks
from dftflow.screening.stages import run_import
from tests import helpers_parallel as hp

GOOD = ["CuCl.cif", "Fe3O4.cif", "Li2O.cif", "garnet.cif"]
GOOD_SITES = {"CuCl.cif": 16, "Fe3O4.cif": 14, "Li2O.cif": 12, "garnet.cif": 160}

NO_ATOMS = """data_empty
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
_chemical_formula_sum 'Na Cl'
"""

P1_TWO_SITES = """data_{name}
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0 0 0 1
X1 {symbol} 0.5 0.5 0.5 1
"""


@pytest.fixture(scope="module")
def cif_dir(shared: Path) -> Path:
    path = shared / "fixtures" / "cif"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def recipe(*sources: dict, timeout_s: float | None = None) -> Recipe:
    kw = {"import": {"timeout_s": timeout_s}} if timeout_s else {}
    return Recipe(name="t", sources=list(sources), **kw)


def rows(catalog: Catalog) -> dict[str, dict]:
    cur = catalog.db.execute("SELECT uid, status, reason, nsites, flags, formula FROM structures")
    return {u: {"status": s, "reason": r, "nsites": n, "flags": json.loads(f), "formula": fo}
            for u, s, r, n, f, fo in cur}


def slow_cif(n_sites: int, blocks: int = 1, seed: int = 0) -> str:
    """A CIF in F m -3 m with ``n_sites`` general positions per block: 192 n atoms to
    generate and merge, which takes pymatgen's parser a long time."""
    rng = random.Random(seed)
    out = []
    for b in range(blocks):
        out += [f"data_slow{b}", "_cell_length_a 40.0", "_cell_length_b 40.0", "_cell_length_c 40.0",
                "_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90",
                "_symmetry_space_group_name_H-M 'F m -3 m'", "_symmetry_Int_Tables_number 225",
                "loop_", "_atom_site_label", "_atom_site_type_symbol",
                "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_occupancy"]
        for i in range(n_sites):
            x, y, z = (rng.uniform(0.01, 0.24) for _ in range(3))
            out.append(f"Na{i} Na {x:.5f} {y:.5f} {z:.5f} 1")
    return "\n".join(out) + "\n"


def write_pt(path: Path, structures: list[tuple], *, lattices: np.ndarray | None = None) -> Path:
    import torch
    data = {
        "frac_coords": torch.tensor([r for s in structures for r in s[3]], dtype=torch.float64),
        "num_atoms": torch.tensor([len(s[0]) for s in structures]),
        "atom_types": torch.tensor([z for s in structures for z in s[0]]),
    }
    if lattices is None:
        data["lengths"] = torch.tensor([s[1] for s in structures], dtype=torch.float64)
        data["angles"] = torch.tensor([s[2] for s in structures], dtype=torch.float64)
    else:
        data["lattices"] = torch.from_numpy(lattices)
    torch.save(data, path)
    return path


NAN = float("nan")
PT_STRUCTURES = [
    ([11, 17], (3.98, 3.98, 3.98), (60, 60, 60), [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ([11, 17], (3.98, 3.98, 3.98), (60, 60, 60), [[0, 0, 0], [0.5, NAN, 0.5]]),     # NaN coordinate
    ([3, 8], (4.0, 4.0, 4.0), (120, 120, 120), [[0, 0, 0], [0.5, 0.5, 0.5]]),       # coplanar axes
    ([3, 8], (4.0, 4.0, 0.0), (90, 90, 90), [[0, 0, 0], [0.5, 0.5, 0.5]]),          # c = 0
    ([12, 8], (4.2, 4.2, 4.2), (90, 90, 90), [[0, 0, 0], [0.5, 0.5, 0.5]]),
]


def test_malformed_inputs_are_recorded_and_the_run_finishes(cif_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "cifs"
    src.mkdir()
    for n in GOOD:
        shutil.copy(cif_dir / n, src / n)
    garnet = (cif_dir / "garnet.cif").read_text()
    (src / "garnet_half.cif").write_text(garnet[: len(garnet) // 2])  # cut before the atom loop
    cucl = (cif_dir / "CuCl.cif").read_text()
    # Cut inside the atom loop: a row broken in the middle, and (worse, since it stays
    # valid CIF) a loop that simply ends early: 8 Cl and 5 of the 8 Cu that the file declares.
    (src / "CuCl_midrow.cif").write_text(cucl[: cucl.index("Cu  Cu12") + 14])
    (src / "CuCl_short.cif").write_text(cucl[: cucl.index("  Cu  Cu14")])
    (src / "no_atoms.cif").write_text(NO_ATOMS)
    for sym in ("Xx", "Qq", "Bb"):
        (src / f"unknown_{sym}.cif").write_text(P1_TWO_SITES.format(name=sym, symbol=sym))
    (src / "control_Cl.cif").write_text(P1_TWO_SITES.format(name="Cl", symbol="Cl"))
    (src / "binary.cif").write_bytes(bytes(range(256)) * 8)
    (src / "truncated.cif.gz").write_bytes(__import__("gzip").compress(cucl.encode())[:200])

    pt = write_pt(tmp_path / "eval_gen.pt", PT_STRUCTURES)
    singular = np.array([np.eye(3) * 4.0, [[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]]])
    pt2 = write_pt(tmp_path / "eval_opt.pt", [PT_STRUCTURES[0], PT_STRUCTURES[4]], lattices=singular)
    missing_keys = tmp_path / "broken.pt"
    missing_keys.write_bytes(b"this is not a torch file")

    r = recipe({"type": "cif", "path": str(src), "label": "icsd"},
               {"type": "diffcsp", "path": str(pt)},
               {"type": "diffcsp", "path": str(pt2), "label": "opt"},
               {"type": "diffcsp", "path": str(missing_keys), "label": "bad"},
               {"type": "cif", "path": str(tmp_path / "does_not_exist"), "label": "gone"})
    catalog = Catalog(tmp_path / "c.sqlite")
    summary = run_import(catalog, r, workers=1)
    got = rows(catalog)

    for n in GOOD:
        row = got[f"icsd:{n}"]
        assert row["status"] == "ok" and row["nsites"] == GOOD_SITES[n] and row["flags"] == []
    assert got["icsd:control_Cl.cif"]["status"] == "ok" and got["icsd:control_Cl.cif"]["formula"] == "Na1 Cl1"

    def failed(uid: str, *words: str) -> str:
        row = got[uid]
        assert row["status"] == "failed", (uid, row)
        assert row["reason"] and all(w in row["reason"] for w in words), (uid, row["reason"])
        return row["reason"]

    failed("icsd:garnet_half.cif", "no atom sites")
    failed("icsd:CuCl_midrow.cif", "unreadable CIF")
    failed("icsd:no_atoms.cif", "no atom sites")
    for sym in ("Xx", "Qq", "Bb"):  # never silently a dummy species or another element (Bb -> B)
        failed(f"icsd:unknown_{sym}.cif", "unknown element", sym)
    failed("icsd:binary.cif")
    failed("icsd:truncated.cif.gz")
    # The loop that ends early is valid CIF; the shortfall against the declared formula is flagged.
    short = got["icsd:CuCl_short.cif"]
    assert short["nsites"] == 13 and "missing_atoms:Cu" in short["flags"]

    assert got["diffcsp:eval_gen.pt:0:0"]["status"] == "ok" and got["diffcsp:eval_gen.pt:0:0"]["formula"] == "Na1 Cl1"
    failed("diffcsp:eval_gen.pt:0:1", "not finite")
    failed("diffcsp:eval_gen.pt:0:2", "degenerate lattice")
    failed("diffcsp:eval_gen.pt:0:3", "degenerate lattice")
    assert got["diffcsp:eval_gen.pt:0:4"]["status"] == "ok" and got["diffcsp:eval_gen.pt:0:4"]["formula"] == "Mg1 O1"
    assert got["opt:eval_opt.pt:0:0"]["status"] == "ok"
    failed("opt:eval_opt.pt:0:1", "degenerate lattice")
    failed("bad:broken.pt!", "not a readable torch file")
    failed("gone:does_not_exist!", "not found")

    n_ok = len(GOOD) + 1 + 1 + 2 + 1  # good CIFs, control, CuCl_short (flagged), two .pt, one opt
    assert summary["total_ok"] == catalog.count("ok") == n_ok
    assert summary["total_failed"] == catalog.count("failed") == len(got) - n_ok
    assert len(got) == len(GOOD) + 10 + 5 + 2 + 2

    # Resumable: a second run does nothing and adds nothing.
    before = sorted(catalog.db.execute("SELECT * FROM structures"))
    again = run_import(catalog, r, workers=1)
    assert again["tasks"] == 0 and again["imported"] == 0 and again["failed"] == 0
    assert sorted(catalog.db.execute("SELECT * FROM structures")) == before

    # A file added later is the only new work.
    shutil.copy(cif_dir / "V2O3.cif", src / "V2O3.cif")
    third = run_import(catalog, r, workers=1)
    assert third["tasks"] == 1 and third["imported"] == 1 and third["failed"] == 0
    assert catalog.count() == len(before) + 1 and catalog.get("icsd:V2O3.cif")["nsites"] == 10


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["CuCl.cif", "Fe3O4.cif", "garnet.cif", "Li2O.cif", "V2O3.cif"])
def test_truncated_fixture_never_imports_silently_wrong(cif_dir: Path, name: str) -> None:
    """Cut a real CIF at every line: each result is a failure, a flagged structure,
    or the complete structure (the cut removed only what follows the atom sites)."""
    from dftflow.sources.cif import parse_cif_text

    text = (cif_dir / name).read_text()
    (full,) = parse_cif_text(text, "u", {})
    lines = text.splitlines(keepends=True)
    seen_failed = 0
    for k in range(1, len(lines)):
        for cut in ("".join(lines[:k]), "".join(lines[:k]) + lines[k][: len(lines[k]) // 2]):
            for e in parse_cif_text(cut, "u", {}):
                if not e.ok:
                    seen_failed += 1
                    assert e.error
                elif not e.flags:
                    assert e.packed == full.packed, f"cut at line {k} imported a different structure"
    assert seen_failed > len(lines) // 2


def test_timeout_on_slow_cif_workers_2(cif_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "cifs"
    src.mkdir()
    for n in GOOD:
        shutil.copy(cif_dir / n, src / n)
    (src / "slow.cif").write_text(slow_cif(300))
    # Two slow blocks in one file: the bound is on the file, not renewed per block.
    (src / "slow_two_blocks.cif").write_text(slow_cif(60, blocks=2, seed=1))
    r = recipe({"type": "cif", "path": str(src), "label": "cod"}, timeout_s=2)
    assert r.import_.timeout_s == 2
    catalog = Catalog(tmp_path / "c.sqlite")
    t0 = time.monotonic()
    summary = run_import(catalog, r, workers=2)
    elapsed = time.monotonic() - t0
    got = rows(catalog)
    assert elapsed < 20, f"import took {elapsed:.1f} s"
    for uid in ("cod:slow.cif", "cod:slow_two_blocks.cif"):
        assert got[uid]["status"] == "failed" and "timed out" in got[uid]["reason"], got[uid]
    assert not any(u.startswith("cod:slow_two_blocks.cif#") for u in got)
    for n in GOOD:
        assert got[f"cod:{n}"]["status"] == "ok" and got[f"cod:{n}"]["nsites"] == GOOD_SITES[n]
    assert summary["imported"] == len(GOOD) and summary["failed"] == 2
    assert catalog.stage("import")["params"]["timeout_s"] == 2


def test_timeout_workers_1(tmp_path: Path, cif_dir: Path) -> None:
    src = tmp_path / "cifs"
    src.mkdir()
    (src / "a_slow.cif").write_text(slow_cif(300))
    shutil.copy(cif_dir / "Li2O.cif", src / "b_Li2O.cif")
    catalog = Catalog(tmp_path / "c.sqlite")
    t0 = time.monotonic()
    run_import(catalog, recipe({"type": "cif", "path": str(src)}, timeout_s=1), workers=1)
    assert time.monotonic() - t0 < 10
    got = rows(catalog)
    assert got["cif:a_slow.cif"]["status"] == "failed" and "timed out after 1 s" in got["cif:a_slow.cif"]["reason"]
    assert got["cif:b_Li2O.cif"]["status"] == "ok"


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_damaged_zip_archives(cif_dir: Path, tmp_path: Path) -> None:
    members = {n: (cif_dir / n).read_bytes() for n in ("CuCl.cif", "garnet.cif", "Li2O.cif")}
    good = _zip(tmp_path / "good.zip", members)
    raw = bytearray(good.read_bytes())
    # Overwrite the middle of garnet.cif's compressed data: that member cannot be inflated.
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("garnet.cif")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    mid = start + info.compress_size // 2
    raw[mid: mid + 64] = bytes(64)
    (tmp_path / "member.zip").write_bytes(bytes(raw))
    # A zip cut short loses its central directory: nothing in it can be listed.
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[: len(raw) // 2])

    r = recipe({"type": "cif", "path": str(tmp_path / "member.zip"), "label": "m"},
               {"type": "cif", "path": str(tmp_path / "cut.zip"), "label": "c"},
               {"type": "cif", "path": str(good), "label": "g"})
    catalog = Catalog(tmp_path / "c.sqlite")
    run_import(catalog, r, workers=1)
    got = rows(catalog)
    assert got["m:member.zip/CuCl.cif"]["status"] == "ok" and got["m:member.zip/CuCl.cif"]["nsites"] == 16
    assert got["m:member.zip/Li2O.cif"]["status"] == "ok" and got["m:member.zip/Li2O.cif"]["nsites"] == 12
    assert got["m:member.zip/garnet.cif"]["status"] == "failed"
    assert "damaged archive" in got["m:member.zip/garnet.cif"]["reason"]
    assert got["c:cut.zip!"]["status"] == "failed" and "damaged archive" in got["c:cut.zip!"]["reason"]
    assert [u for u in got if u.startswith("g:")] == [f"g:good.zip/{n}" for n in members]
    assert all(got[f"g:good.zip/{n}"]["status"] == "ok" for n in members)

    before = catalog.count()
    assert run_import(catalog, r, workers=1)["tasks"] == 0 and catalog.count() == before


def test_unusable_pt_in_a_directory_does_not_block_the_others(tmp_path: Path) -> None:
    import torch
    gen = tmp_path / "runs"
    (gen / "a").mkdir(parents=True)
    (gen / "b").mkdir()
    # A dict whose arrays are not arrays, then a good file after it.
    torch.save({"frac_coords": {"x": 1}, "num_atoms": torch.tensor([1]), "atom_types": torch.tensor([3]),
                "lengths": torch.ones(1, 3), "angles": torch.ones(1, 3) * 90}, gen / "a" / "eval_gen.pt")
    write_pt(gen / "b" / "eval_gen.pt", [PT_STRUCTURES[0], PT_STRUCTURES[4]])
    catalog = Catalog(tmp_path / "c.sqlite")
    summary = run_import(catalog, recipe({"type": "diffcsp", "path": str(gen), "label": "dcsp"}))
    got = rows(catalog)
    assert got["dcsp:a/eval_gen.pt!"]["status"] == "failed"
    assert got["dcsp:b/eval_gen.pt:0:0"]["status"] == "ok" and got["dcsp:b/eval_gen.pt:0:1"]["status"] == "ok"
    assert summary["imported"] == 2


# -- run_tasks -------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_run_tasks_raising_task_is_an_error_outcome(workers: int) -> None:
    outs = {o.task: o for o in run_tasks(hp.square_or_raise, range(12), workers=workers, chunk_size=4)}
    assert sorted(outs) == list(range(12))
    for x, o in outs.items():
        if x % 5 == 3:
            assert o.result is None and o.error == f"ValueError: boom {x}"
        else:
            assert o.error is None and o.result == x * x


def test_run_tasks_worker_death_fails_only_that_task() -> None:
    tasks = list(range(12))
    t0 = time.monotonic()
    outs = list(run_tasks(hp.square_or_die, tasks, workers=2, chunk_size=3))
    assert time.monotonic() - t0 < 30
    assert sorted(o.task for o in outs) == tasks  # each task reported exactly once
    by_task = {o.task: o for o in outs}
    assert by_task[hp.KILLER].result is None and "worker process died" in by_task[hp.KILLER].error
    for x in tasks:
        if x != hp.KILLER:
            assert by_task[x].error is None and by_task[x].result == x * x, by_task[x]


@pytest.mark.parametrize("workers", [1, 2])
def test_run_tasks_timeout_is_not_swallowed_by_the_task(workers: int) -> None:
    t0 = time.monotonic()
    outs = list(run_tasks(hp.sleep_swallowing, [5.0, 0.01], workers=workers, timeout=0.5, chunk_size=1))
    assert time.monotonic() - t0 < 5
    by_task = {o.task: o for o in outs}
    assert by_task[5.0].result is None and by_task[5.0].error == "timed out after 0.5 s"
    assert by_task[0.01].error is None and by_task[0.01].result == "finished"


def test_run_tasks_serial_results_in_order() -> None:
    assert [o.result for o in run_tasks(hp.square, range(40), workers=1, chunk_size=7)] == [x * x for x in range(40)]
