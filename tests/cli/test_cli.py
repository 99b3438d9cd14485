"""The dftflow command as a user runs it: help, errors, JSON output, resumable builds."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dftflow.project import Project
from tests.helpers_process import kill_group, wait_for_count

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "workflows" / "structures" / "demo"


def dftflow(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dftflow", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"dftflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_every_command_with_a_description() -> None:
    out = dftflow("--help", check=True).stdout
    for command in ("build-dataset", "candidates", "recipes", "profiles"):
        line = next(line for line in out.splitlines() if f" {command} " in line)
        assert len(line.split(command, 1)[1].strip(" │")) > 10, line
    sub = dftflow("candidates", "--help", check=True).stdout
    for command in ("import", "screen", "dedup", "select", "funnel", "list", "show"):
        assert f" {command} " in sub


def test_errors_are_one_line_with_exit_code_1(tmp_path: Path) -> None:
    proc = dftflow("build-dataset", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1
    assert "missing.yaml" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[0].startswith("error:")

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources:\n  - {type: cif, path: a, colour: red}\n")
    proc = dftflow("recipes", "show", str(bad))
    assert proc.returncode == 1
    assert f"{bad}: sources[0].colour: unknown key" in proc.stderr

    proc = dftflow("--debug", "recipes", "show", str(bad))
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_json_outputs_are_machine_readable() -> None:
    recipes = json.loads(dftflow("recipes", "list", "--json", check=True).stdout)
    assert {"demo", "ecd"} <= {r["name"] for r in recipes}
    shown = json.loads(dftflow("recipes", "show", "demo", "--json", check=True).stdout)
    assert shown["screening"]["symmetry"]["symprec"] == 0.1
    profiles = json.loads(dftflow("profiles", "show", "slurm-generic", "--json", check=True).stdout)
    assert profiles["scheduler"] == "slurm"


def test_build_dataset_demo_json_and_figures(tmp_path: Path) -> None:
    out = json.loads(dftflow("build-dataset", "demo", "--until", "harvest", "--project", str(tmp_path / "p"),
                             "--json", check=True).stdout)
    funnel = {r["step"]: r for r in out["funnel"]}
    assert funnel["dedup"]["passed"] == 16
    assert out["stages"]["select"]["hse"]["size"] == 6
    for fig in out["figures"]:
        assert Path(fig).stat().st_size > 10_000 and Path(fig).read_bytes()[:4] == b"\x89PNG"
    assert out["versions"]["smact"] and out["versions"]["spglib"]
    # the recorded settings come back with every result
    listed = json.loads(dftflow("candidates", "show", "demo:Si.cif", "-p", str(tmp_path / "p"), "--json",
                                check=True).stdout)
    assert [o["filter"] for o in listed["outcomes"]][-1] == "dedup"
    # a candidate lists exactly the selections the catalog holds it in: one chosen for HSE06 and one not
    with sqlite3.connect(tmp_path / "p" / "catalog.sqlite") as db:
        hse = {u for (u,) in db.execute("SELECT uid FROM selections WHERE name='hse'")}
        passed = {u for (u,) in db.execute("SELECT uid FROM outcomes WHERE filter='dedup' AND status='pass'")}
    assert len(hse) == 6 and hse < passed
    for uid in (sorted(hse)[0], sorted(passed - hse)[0]):
        shown = json.loads(dftflow("candidates", "show", uid, "-p", str(tmp_path / "p"), "--json",
                                   check=True).stdout)
        assert shown["selections"] == (["hse"] if uid in hse else []), (uid, shown["selections"])


def test_recipe_trains_a_model_and_evaluates_scf_acceleration(tmp_path: Path) -> None:
    """The demo's last stages on three crystals: split → train → accel-eval of the held-back one."""
    structures = tmp_path / "structures"
    structures.mkdir()
    for name in ("Si", "C_diamond", "SiC_3C"):
        shutil.copy(DEMO / f"{name}.cif", structures)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
workers: 2
sources: [{{type: cif, path: {structures}, label: t}}]
dft: {{engine: gpaw, static: gpaw_pbe_static, overrides: {{ecut: 250, kpoint_density: 8}}}}
harvest: {{out: dataset}}
train:
  config: charge3net-demo
  test: 1
  val: 1
  overrides: {{optim.max_steps: 4, optim.val_every: 2, optim.checkpoint_every: 2, data.n_probes: 32}}
accel: {{arms: [default, ml, oracle], nfixed: 2}}
""")
    out = json.loads(dftflow("build-dataset", str(recipe), "--project", str(tmp_path / "p"), "--json",
                             check=True).stdout)
    split = json.loads((tmp_path / "p" / "split.json").read_text())
    assert sorted(len(v) for v in split["sets"].values()) == [1, 1, 1]
    assert out["stages"]["train"]["steps"] == 4 and Path(out["stages"]["train"]["model"]).exists()
    accel = out["stages"]["accel"]
    [row] = accel["materials"]
    assert row["uid"] == split["sets"]["pbe_test"][0]
    assert row["arms"] == ["default", "ml", "oracle", "predict"] and accel["problems"] == []
    assert row["steps_oracle"] < row["steps_default"]
    # rerun: the model is trained and the arms are done; nothing runs again
    again = json.loads(dftflow("build-dataset", str(recipe), "--project", str(tmp_path / "p"), "--json",
                               check=True).stdout)
    assert again["stages"]["train"]["already_trained"] is True
    assert again["stages"]["accel"]["materials"] == accel["materials"]


def test_until_stops_after_the_stage(tmp_path: Path) -> None:
    out = json.loads(dftflow("build-dataset", "demo", "--until", "screen", "--no-figures",
                             "--project", str(tmp_path / "p"), "--json", check=True).stdout)
    assert list(out["stages"]) == ["import", "screen"]
    proc = dftflow("build-dataset", "demo", "--until", "relax", "--project", str(tmp_path / "p"))
    assert proc.returncode == 1 and "--until 'relax'" in proc.stderr


def test_single_step_commands(tmp_path: Path) -> None:
    p = str(tmp_path / "p")
    dftflow("candidates", "import", str(DEMO), "--label", "mine", "-p", p, "--json", check=True)
    for step in ("screen", "dedup"):
        dftflow("candidates", step, "-p", p, "--json", check=True)
    rows = json.loads(dftflow("candidates", "list", "-p", p, "--status", "kept", "--limit", "0", "--json",
                              check=True).stdout)
    assert len(rows) == 16
    funnel = json.loads(dftflow("candidates", "funnel", "-p", p, "--json", "--no-figures", check=True).stdout)
    assert funnel["funnel"][0]["entered"] == 17


def test_second_writer_is_refused_clearly(tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    with project.locked("test holder"):
        proc = dftflow("build-dataset", "demo", "--project", str(project.root))
    assert proc.returncode == 1
    assert "in use by pid" in proc.stderr and "test holder" in proc.stderr


def _many_cifs(dest: Path, copies: int) -> None:
    dest.mkdir()
    for i in range(copies):
        for cif in DEMO.glob("*.cif"):
            shutil.copy(cif, dest / f"{cif.stem}_{i:03d}.cif")


@pytest.mark.slow
def test_kill_9_then_rerun_completes_every_structure_once(tmp_path: Path) -> None:
    src = tmp_path / "cifs"
    _many_cifs(src, 40)  # 680 files
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: k\nworkers: 2\nsources:\n  - {{type: cif, path: {src}, label: k}}\n")
    project = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "dftflow", "build-dataset", str(recipe), "--project",
                             str(project), "--no-figures"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = project / "catalog.sqlite"
    n = wait_for_count(db, "SELECT COUNT(*) FROM structures", 50, timeout=120)
    kill_group(proc)
    assert 50 <= n < 680, "the build finished before it could be killed"

    out = json.loads(dftflow("build-dataset", str(recipe), "--project", str(project), "--json",
                             "--no-figures", check=True).stdout)
    con = sqlite3.connect(db)
    uids = [u for (u,) in con.execute("SELECT uid FROM structures")]
    assert len(uids) == len(set(uids)) == 680
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    funnel = {r["step"]: r for r in out["funnel"]}
    assert funnel["symmetry"]["entered"] == 680
    # 40 copies of 16 distinct crystals (+ the Si duplicate): 16 unique structures
    assert funnel["dedup"]["passed"] == 16


def test_non_editable_install_finds_bundled_files(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("dftflow-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import dftflow, dftflow.resources as r; print(dftflow.__file__); print(r.data_dir('workflows'))"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                           check=True).stdout.split()
    assert where[0].startswith(str(target)) and where[1].startswith(str(target))
    listed = subprocess.run([sys.executable, "-m", "dftflow", "recipes", "list", "--json"], capture_output=True,
                            text=True, cwd=elsewhere, env=env, check=True).stdout
    assert {"demo", "ecd"} <= {r["name"] for r in json.loads(listed)}
    assert (target / "dftflow" / "_data" / "workflows" / "structures" / "demo" / "Si.cif").is_file()
    assert (target / "dftflow" / "_data" / "cluster_profiles" / "local.yaml").is_file()
