"""``dftflow dashboard`` on a project that runs on the FireWorks engine (a real LaunchPad on a mongomock file).

The project is made by ``dftflow submit --dry-run`` (two Si workflows, relax → static, nothing sent to a
scheduler); fireworks are then run to COMPLETED, FIZZLED (with an exception's trace, as a rocket stores
it) and RUNNING through FireWorks' own LaunchPad API under dftflow's ``open_launchpad``. The dashboard
must show that, and a firework completed while the page is open, without writing a byte anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dftflow.config.profile import FireworksSettings
from dftflow.execution.fw_launchpad import open_launchpad
from tests.dashboard.test_dashboard import Dashboard, _cells
from tests.execution.test_fireworks import FLOW, cli, si_poscar, write_profile

SETTINGS = FireworksSettings(launchpad="mongomock:launchpad.json")
TRACE = "Traceback (most recent call last):\n  File \"vasp.py\", line 3, in run\nValueError: no reference for static"


def _checkout(lp, fw_id: int) -> tuple[dict, int]:
    from fireworks import FWorker

    fw, launch_id = lp.checkout_fw(FWorker(name="dftflow"), "unused", fw_id=fw_id)
    tag = fw.spec["_dftflow"]
    lp.change_launch_dir(launch_id, tag["dir"])
    return tag, launch_id


def _files(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file below ``root`` with its bytes, inode and modification time (a rewrite by rename changes the inode)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = Path(path).read_bytes() if os.path.isfile(path) else b""
            out[os.path.relpath(path, root)] = (data, st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def fw_project(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dash-fw")
    root = tmp / "project"
    profile = write_profile(tmp / "profile.yaml")
    si_poscar(shared, tmp / "Si.vasp")
    shutil.copy(tmp / "Si.vasp", tmp / "Si2.vasp")
    out = cli("submit", str(tmp / "Si.vasp"), str(tmp / "Si2.vasp"), "-p", str(root), "--profile", str(profile),
              *FLOW, "--dry-run")
    assert out["workflows_added"] == 2
    from fireworks import FWAction  # after dftflow's first opening: FireWorks with its mongomock client

    with open_launchpad(SETTINGS, root) as lp:
        names = {fw["fw_id"]: (fw["spec"]["_dftflow"]["uid"], fw["name"])
                 for fw in lp.fireworks.find({}, {"fw_id": 1, "name": 1, "spec._dftflow": 1})}
        assert names == {1: ("Si", "relax"), 2: ("Si", "static"), 3: ("Si2", "relax"), 4: ("Si2", "static")}
        _, relax = _checkout(lp, 1)
        lp.complete_launch(relax, FWAction(stored_data={"energy": -10.8}), "COMPLETED")
        static, launch = _checkout(lp, 2)  # READY now that its relax completed
        lp.complete_launch(launch, FWAction(stored_data={"_message": "runtime error during task", "_task": {},
                                                         "_exception": {"_stacktrace": TRACE, "_details": None}},
                                            exit=True), "FIZZLED")
        running, running_launch = _checkout(lp, 3)
    # what the offline rocket leaves in the fizzled job's directory
    workdir = Path(static["dir"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "std_err.txt").write_text("ValueError: no reference for static\n")
    (workdir / "FW_offline.json").write_text(json.dumps({"launch_id": launch, "state": "FIZZLED"}))
    yield {"root": root, "tmp": tmp, "static": static, "running_launch": running_launch, "profile": profile}


@pytest.fixture(scope="module")
def fw_dashboard(fw_project):
    server = Dashboard(fw_project["root"], "--poll", "1")
    yield server
    server.stop()




def test_the_api_shows_fireworks_states_and_the_fizzled_reason(fw_project, fw_dashboard) -> None:
    root = fw_project["root"]
    before = _files(root)
    status, body = fw_dashboard.get("/api/jobs")
    assert status == 200, body
    data = json.loads(body)
    assert data["engine"] == "fireworks" and data["exists"] and data["launchpad"] == "mongomock:launchpad.json"
    assert data["states"] == ["WAITING", "READY", "RESERVED", "RUNNING", "COMPLETED", "FIZZLED", "DEFUSED",
                              "PAUSED", "ARCHIVED"]
    assert data["counts"] == {"WAITING": 1, "READY": 0, "RESERVED": 0, "RUNNING": 1, "COMPLETED": 1, "FIZZLED": 1,
                              "DEFUSED": 0, "PAUSED": 0, "ARCHIVED": 0}
    assert data["total"] == 4 and data["failed_total"] == 1
    [running] = data["running"]
    assert (running["uid"], running["job"], running["worker"], running["attempts"]) == ("Si2", "relax", "dftflow", 1)
    assert running["started"] and running["heartbeat"]
    assert [(r["uid"], r["job"], r["state"]) for r in data["recent"]] == [("Si", "static", "FIZZLED"),
                                                                          ("Si", "relax", "COMPLETED")]
    [failure] = data["failures"]
    assert failure["reason"] == "ValueError: no reference for static"  # the trace's last line, as `status` shows it
    assert (failure["uid"], failure["job"], failure["state"], failure["uuid"]) == (
        "Si", "static", "FIZZLED", fw_project["static"]["job_uuid"])
    rel = Path(fw_project["static"]["dir"]).relative_to(root.resolve()).as_posix()
    assert failure["logs"] == [f"{rel}/std_err.txt", f"{rel}/FW_offline.json"]
    assert data["failure_reasons"] == [["ValueError: no reference for static", 1]]
    status, body = fw_dashboard.get(f"/files/{rel}/std_err.txt")
    assert status == 200 and body == b"ValueError: no reference for static\n"
    # the same function as `dftflow status` reads the reason with
    from dftflow.execution.fw_engine import fizzle_reason

    assert fizzle_reason({"action": {"stored_data": {"_exception": {"_stacktrace": TRACE}}}}) == failure["reason"]
    # nothing in the project (the LaunchPad file included) was written, renamed or touched
    assert _files(root) == before


def test_the_view_never_loads_fireworks_persisting_client(fw_project) -> None:
    """FireWorks' mongomock client rewrites the file when collected: the view reads the JSON without it."""
    code = ("import sys, json; from pathlib import Path; from dftflow.dashboard import views; "
            f"d = views.jobs(Path({str(fw_project['root'])!r})); "
            "print(json.dumps([d['total'], sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('fireworks', 'mongomock', 'mongomock_persistence'))]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [4, []]


def test_the_page_shows_fireworks_and_a_completion_without_reload(fw_project, fw_dashboard, browser) -> None:
    from fireworks import FWAction

    root = fw_project["root"]
    browser.goto(fw_dashboard.url)
    browser.wait_for("document.querySelector('#jobs-count-FIZZLED')")
    browser.evaluate("window.__sameDocument = 'yes'")
    assert "FireWorks engine" in browser.text("#jobs-engine")
    expected = {"WAITING": 1, "READY": 0, "RESERVED": 0, "RUNNING": 1, "COMPLETED": 1, "FIZZLED": 1, "DEFUSED": 0,
                "PAUSED": 0, "ARCHIVED": 0}
    for state, n in expected.items():
        assert browser.text(f"#jobs-count-{state}") == str(n), state
    assert browser.text("#jobs-total") == "4"
    assert "Si2" in browser.text("#jobs-running") and "relax" in browser.text("#jobs-running")
    assert browser.text("#failures-total").startswith("1 fizzled or defused")
    [row] = _cells(browser, "#failures-table")
    assert row[:5] == ["Si", "static", "FIZZLED", "1", "ValueError: no reference for static"]
    assert row[5].split() == ["std_err.txt", "FW_offline.json"]
    assert _cells(browser, "#failure-reasons") == [["ValueError: no reference for static", "1"]]
    browser.evaluate("window.__failures = document.querySelector('#failures-table')")
    # the running firework completes (as `dftflow status` would record it) while the page is open
    with open_launchpad(SETTINGS, root) as lp:
        lp.complete_launch(fw_project["running_launch"], FWAction(stored_data={"energy": -10.8}), "COMPLETED")
    browser.wait_for("document.querySelector('#jobs-count-COMPLETED').textContent === '2'", timeout=20)
    expected.update({"RUNNING": 0, "COMPLETED": 2, "READY": 1, "WAITING": 0})  # Si2's static is READY
    for state, n in expected.items():
        assert browser.text(f"#jobs-count-{state}") == str(n), state
    assert "nothing running" in browser.text("#jobs-running")
    assert _cells(browser, "#jobs-recent")[0][:3] == ["Si2", "relax", "COMPLETED"]
    assert browser.evaluate("window.__sameDocument") == "yes"
    assert browser.evaluate("document.querySelector('#failures-table') === window.__failures")
    # while the page keeps polling, nothing is written
    after = _files(root)
    updated = browser.text("#jobs-updated")
    browser.wait_for(f"document.querySelector('#jobs-updated').textContent !== {json.dumps(updated)}", timeout=20)
    status, body = fw_dashboard.get("/api/jobs")
    assert status == 200 and json.loads(body)["counts"] == expected
    assert _files(root) == after
