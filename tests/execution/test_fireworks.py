"""The FireWorks engine: jobflow flows on a real FireWorks LaunchPad (mongomock persisted to a JSON file).

The SLURM tests run offline rockets through the real one-node SLURM of tests/slurm_cluster.py, with the
VASP double replaying the Si relax → static references.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.config.profile import ClusterProfile, FireworksSettings, SlurmSettings, load_profile
from dftflow.errors import ConfigError, InputError
from dftflow.execution import fw_engine, fw_project
from dftflow.execution.fw_launches import FwLauncher, allocation_script, fw_rocket
from dftflow.execution.fw_launchpad import open_launchpad
from dftflow.execution.slurm import SlurmError
from tests.conftest import DOUBLE
from tests.helpers_jobs import record
from tests.helpers_process import submit_at_once
from tests.helpers_rocket import vasp_like

SI = "fixtures/vasp/Si_mp_gga_relax"
FLOW = ["--relax-set", "mp-relax", "--static-set", "mp-static"]


def cli(*args: str) -> dict:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def write_profile(path: Path, *, pack: int = 1, walltime: str = "00:05:00", fireworks: dict | None = None,
                  **slurm) -> Path:
    data = {"name": "test-fireworks", "scheduler": "slurm", "engine": "fireworks", "pack": pack,
            "fireworks": {"launchpad": "mongomock:launchpad.json", **(fireworks or {})},
            "slurm": {"partition": "debug", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
                      "walltime": walltime, "stop_margin_s": 0, "max_queued": 10,
                      "extra_directives": ["--mem=100M"], **slurm},
            "commands": {"vasp_std": f"{sys.executable} {DOUBLE}"}}
    path.write_text(yaml.safe_dump(data))
    return path


def si_poscar(shared: Path, path: Path) -> Path:
    path.write_bytes(gzip.decompress((shared / SI / "GGA_Relax_1" / "inputs" / "POSCAR.gz").read_bytes()))
    return path


def launchpad_fireworks(project: Path) -> list[dict]:
    with open_launchpad(FireworksSettings(launchpad="mongomock:launchpad.json"), project) as lp:
        return sorted(lp.fireworks.find({}, {"_id": 0, "fw_id": 1, "name": 1, "state": 1, "spec._dftflow": 1}),
                      key=lambda d: d["fw_id"])


# -- without a scheduler -----------------------------------------------------------------------


def test_profile_needs_a_fireworks_section_and_slurm(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "scheduler": "slurm", "engine": "fireworks",
                                    "slurm": {"walltime": "01:00:00"}}))
    with pytest.raises(ConfigError, match="fireworks: section"):
        load_profile(path)
    path.write_text(yaml.safe_dump({"name": "x", "engine": "fireworks", "fireworks": {"launchpad": "lp.yaml"}}))
    with pytest.raises(ConfigError, match="scheduler: slurm"):
        load_profile(path)
    assert load_profile(write_profile(path)).fireworks.launchpad == "mongomock:launchpad.json"


def test_profiles_check_shows_fireworks_queue_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # its own process, as on a login node: FireWorks, once imported with MongoDB's client, stays so in a process
    monkeypatch.delenv("DFTFLOW_DB_PASSWORD", raising=False)
    res = subprocess.run([sys.executable, "-m", "dftflow", "profiles", "check", "slurm-fireworks", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "-m dftflow fw-rocket" in out["script"]
    assert out["script"].rstrip().endswith("# CommonAdapter (SLURM) completed writing Template")  # FireWorks' template
    assert "#SBATCH --ntasks-per-node=32" in out["script"] and "#SBATCH --time=04:00:00" in out["script"]
    assert out["warnings"] == ["fireworks.launchpad uses unset environment variable(s): DFTFLOW_DB_PASSWORD"]


def test_duplicate_submit_adds_nothing_and_dry_run_reserves_nothing(shared: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    profile = write_profile(tmp_path / "profile.yaml", modules=["vasp/6"])
    poscar = si_poscar(shared, tmp_path / "Si.vasp")
    first = cli("submit", str(poscar), "-p", str(project), "--profile", str(profile), *FLOW, "--dry-run")
    assert first["workflows_added"] == 1
    [launch] = first["launched"]
    assert launch["slurm_id"] is None and launch["jobs"] == 1
    # the allocation's script is FireWorks' CommonAdapter rendering its own SLURM template
    script = (Path(launch["dir"]) / "FW_submit.script").read_text()
    assert script.startswith("#!/bin/bash -l\n") and "# CommonAdapter (SLURM) completed writing Template" in script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=00:05:00" in script
    assert f"cd {launch['dir']}\nexec " in script and f"-m dftflow fw-rocket {launch['dir']}" in script
    assert "module load vasp/6" in script and "DFTFLOW_STOP_MARGIN=0" in script
    assert "$$" not in script  # the template's keys the profile leaves unset are gone
    rockets = json.loads((Path(launch["dir"]) / "launch.json").read_text())["rockets"]
    assert [r["name"] for r in rockets] == ["relax"]
    assert (Path(rockets[0]["dir"]) / "FW.json").exists()  # FireWorks' offline files, in the job directory
    again = cli("submit", str(poscar), "-p", str(project), "--profile", str(profile), *FLOW, "--dry-run")
    assert again["workflows_added"] == 0
    fws = launchpad_fireworks(project)
    assert [(f["name"], f["state"]) for f in fws] == [("relax", "READY"), ("static", "WAITING")]
    assert {f["spec"]["_dftflow"]["uid"] for f in fws} == {"Si"}
    status = cli("status", "-p", str(project))
    assert status["engine"] == "fireworks" and status["counts"]["READY"] == 1 and status["counts"]["WAITING"] == 1
    # the project's workflows are on the LaunchPad: an embedded-engine profile is refused, not mixed in
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()), "engine": "embedded"}))
    res = CliRunner().invoke(app, ["submit", str(poscar), "-p", str(project), "--profile", str(embedded), *FLOW])
    assert isinstance(res.exception, InputError) and "on the fireworks engine" in str(res.exception)
    assert not (project / "jobs.sqlite").exists()


def test_concurrent_submits_add_each_workflow_once(shared: Path, tmp_path: Path) -> None:
    """Two submit processes at once on one mongomock LaunchPad: the file lock serialises their openings."""
    project = tmp_path / "project"
    profile = write_profile(tmp_path / "profile.yaml")
    poscar = si_poscar(shared, tmp_path / "Si.vasp")
    copies = []
    for i in range(6):
        p = tmp_path / f"Si{i}.vasp"
        p.write_bytes(poscar.read_bytes())
        copies.append(str(p))
    args = [sys.executable, "-m", "dftflow", "submit", *copies, "-p", str(project), "--profile", str(profile),
            *FLOW, "--dry-run", "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert sum(json.loads(out)["workflows_added"] for out, _ in outs) == 6
    fws = launchpad_fireworks(project)
    assert len(fws) == 12
    assert sorted(f["spec"]["_dftflow"]["uid"] for f in fws) == sorted([f"Si{i}" for i in range(6)] * 2)


def test_a_claim_left_by_a_dead_submit_is_taken_over_once_stale(tmp_path: Path) -> None:
    from jobflow import Flow

    settings = FireworksSettings(launchpad="mongomock:launchpad.json")
    key = fw_engine.project_key(tmp_path)
    items = [("a", lambda: Flow([record(str(tmp_path / "m"), 1)]))]
    with open_launchpad(settings, tmp_path) as lp:
        claims = lp.db[fw_engine.CLAIMS]
        claims.insert_one({"_id": f"{key}|a", "project": key, "uid": "a", "state": "adding", "time": time.time()})
        assert fw_engine.add_workflows(lp, tmp_path, items) == 0  # another submit may be inserting it now
        claims.update_one({"_id": f"{key}|a"}, {"$set": {"time": time.time() - fw_engine.STALE_CLAIM_S - 1}})
        assert fw_engine.add_workflows(lp, tmp_path, items) == 1  # that submit died: its claim is taken over
        assert fw_engine.add_workflows(lp, tmp_path, items) == 0
        assert claims.find_one({"_id": f"{key}|a"})["state"] == "added"
        assert lp.workflows.count_documents({"metadata.dftflow_key": f"{key}|a"}) == 1


def test_a_failed_opening_writes_nothing(tmp_path: Path) -> None:
    settings = FireworksSettings(launchpad="mongomock:launchpad.json")
    with open_launchpad(settings, tmp_path) as lp:
        lp.db["dftflow_workflows"].insert_one({"_id": "kept"})
    before = (tmp_path / "launchpad.json").read_text()
    with pytest.raises(RuntimeError), open_launchpad(settings, tmp_path) as lp:
        lp.db["dftflow_workflows"].insert_one({"_id": "lost"})
        raise RuntimeError("interrupted")
    assert (tmp_path / "launchpad.json").read_text() == before
    with open_launchpad(settings, tmp_path) as lp:
        assert [d["_id"] for d in lp.db["dftflow_workflows"].find()] == ["kept"]


# -- offline rockets and recovery with SLURM's commands faked -----------------------------------


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch answers 4242; squeue and sacct print $FAKE_SQUEUE / $FAKE_SACCT (SLURM's own output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", "echo 'Submitted batch job 4242'"), ("squeue", 'printf "%s" "$FAKE_SQUEUE"'),
                       ("sacct", 'printf "%s" "$FAKE_SACCT"'), ("scontrol", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUSTODIAN_WALLTIME_START", raising=False)
    monkeypatch.setenv("DFTFLOW_VASP_COMMANDS", "{}")


def one_allocation(project: Path, jobs: list) -> tuple[ClusterProfile, dict]:
    """One single-job workflow per job, all reserved into one allocation (pack = len(jobs))."""
    from jobflow import Flow

    profile = ClusterProfile(name="fake", scheduler="slurm", engine="fireworks", pack=len(jobs),
                             fireworks=FireworksSettings(launchpad="mongomock:launchpad.json"),
                             slurm=SlurmSettings(walltime="00:10:00"))
    with open_launchpad(profile.fireworks, project) as lp:
        assert fw_engine.add_workflows(lp, project, [(f"f{i}", lambda j=j: Flow([j])) for i, j in enumerate(jobs)]) \
            == len(jobs)
        [launch] = FwLauncher(lp, project, profile).launch()
    assert launch["slurm_id"] == "4242" and launch["jobs"] == len(jobs)
    return profile, launch


def test_a_failing_sbatch_keeps_the_allocations_already_submitted(tmp_path, fake_slurm) -> None:
    """sbatch accepts one allocation, then refuses (a QOS limit): the first stays recorded and reserved."""
    from jobflow import Flow

    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(f"#!/bin/sh\nif [ -f {tmp_path}/once ]; then echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit'"
                      f" >&2; exit 1; fi\ntouch {tmp_path}/once\necho 'Submitted batch job 4242'\n")
    project = tmp_path / "project"
    profile = ClusterProfile(name="fake", scheduler="slurm", engine="fireworks", pack=1,
                             fireworks=FireworksSettings(launchpad="mongomock:launchpad.json"),
                             slurm=SlurmSettings(walltime="00:10:00"))
    jobs = [record(str(tmp_path / "m"), i) for i in range(2)]
    out = fw_project.submit(project, profile, [(f"f{i}", lambda j=j: Flow([j])) for i, j in enumerate(jobs)])
    assert out["workflows_added"] == 2 and [x["slurm_id"] for x in out["launched"]] == ["4242"]
    status = fw_project.status(project, profile, env={**os.environ, "FAKE_SQUEUE": "4242 PENDING\n"})
    assert sorted(r["state"] for r in status["jobs"]) == ["READY", "RESERVED"]
    assert [x["slurm_id"] for x in status["launches"]] == ["4242"]


def test_a_refused_submission_reports_sbatch_and_reserves_nothing(tmp_path, fake_slurm) -> None:
    """CommonAdapter.submit_to_queue only logs sbatch's refusal: its words reach the error, the firework is READY."""
    from jobflow import Flow

    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    project = tmp_path / "project"
    profile = ClusterProfile(name="fake", scheduler="slurm", engine="fireworks", pack=1,
                             fireworks=FireworksSettings(launchpad="mongomock:launchpad.json"),
                             slurm=SlurmSettings(walltime="00:10:00", account="nope"))
    with open_launchpad(profile.fireworks, project) as lp:
        assert fw_engine.add_workflows(lp, project, [("f0", lambda: Flow([record(str(tmp_path / "m"), 1)]))]) == 1
        with pytest.raises(SlurmError, match="Invalid account"):
            FwLauncher(lp, project, profile).launch()
        [fw] = lp.fireworks.find({}, {"state": 1, "launches": 1})
        assert fw["state"] == "READY" and fw["launches"] == []
        assert lp.offline_runs.count_documents({"deprecated": False}) == 0
        [script] = (project / "launches").glob("*/FW_submit.script")
        assert "#SBATCH --account=nope" in script.read_text()


def test_a_profile_line_fireworks_would_drop_is_refused_before_reserving(tmp_path, fake_slurm) -> None:
    """CommonAdapter removes every script line holding '$$' (an unfilled key): such a pre_run line is an error."""
    from jobflow import Flow

    project = tmp_path / "project"
    profile = ClusterProfile(name="fake", scheduler="slurm", engine="fireworks", pack=1,
                             fireworks=FireworksSettings(launchpad="mongomock:launchpad.json"),
                             slurm=SlurmSettings(walltime="00:10:00", pre_run=["echo started by $$"]))
    with open_launchpad(profile.fireworks, project) as lp:
        assert fw_engine.add_workflows(lp, project, [("f0", lambda: Flow([record(str(tmp_path / "m"), 1)]))]) == 1
        with pytest.raises(ConfigError, match="echo started by"):
            FwLauncher(lp, project, profile).launch()
        assert lp.fireworks.find_one({})["state"] == "READY" and lp.launches.count_documents({}) == 0


def test_a_site_template_replaces_fireworks_own(tmp_path: Path) -> None:
    template = tmp_path / "site_slurm.txt"
    template.write_text("#!/bin/bash\n#SBATCH --time=$${walltime}\n#SBATCH --gres=$${gres}\n# site template\n"
                        "$${pre_rocket}\ncd $${launch_dir}\n$${rocket_launch}\n")
    profile = ClusterProfile(name="site", scheduler="slurm", engine="fireworks",
                             fireworks=FireworksSettings(launchpad="mongomock:launchpad.json", template=str(template)),
                             slurm=SlurmSettings(walltime="02:00:00", modules=["vasp/6.4"]))
    with pytest.warns(UserWarning, match="nodes"):  # FireWorks' own warning: a key the template lacks
        script = allocation_script(profile, tmp_path / "alloc", job_name="x")
    assert script.splitlines()[:3] == ["#!/bin/bash", "#SBATCH --time=02:00:00", "# site template"]
    assert "module load vasp/6.4" in script and f"fw-rocket {tmp_path / 'alloc'}" in script


def test_an_allocation_that_timed_out_fizzles_its_running_job_and_frees_the_rest(tmp_path, fake_slurm,
                                                                                 monkeypatch) -> None:
    project = tmp_path / "project"
    profile, launch = one_allocation(project, [record(str(tmp_path / "m"), 1), record(str(tmp_path / "m"), 2)])
    first, second = json.loads((Path(launch["dir"]) / "launch.json").read_text())["rockets"]
    offline = Path(first["dir"]) / "FW_offline.json"  # the first rocket had started when SLURM ended it
    offline.write_text(json.dumps({**json.loads(offline.read_text()), "started_on": "2026-01-01T00:00:00+00:00"}))
    monkeypatch.setenv("FAKE_SQUEUE", "4242 RUNNING\n")
    status = fw_project.status(project, profile)
    assert {r["uid"]: r["state"] for r in status["jobs"]} == {"f0": "RUNNING", "f1": "RESERVED"}
    monkeypatch.setenv("FAKE_SQUEUE", "")  # gone from squeue; sacct says how it ended
    monkeypatch.setenv("FAKE_SACCT", "TIMEOUT\n")
    status = fw_project.status(project, profile)
    jobs = {r["uid"]: r for r in status["jobs"]}
    assert jobs["f0"]["state"] == "FIZZLED"
    assert jobs["f0"]["error"] == "SLURM job 4242 reached its time limit (TIMEOUT) while this job ran"
    assert jobs["f1"]["state"] == "READY"  # never started: reservation cancelled
    assert [x["slurm_state"] for x in status["launches"]] == ["TIMEOUT"]
    again = fw_project.retry(project, profile)
    assert again["requeued"] == 1 and len(again["launched"]) == 1 and again["launched"][0]["jobs"] == 2


def test_a_job_stopped_before_the_walltime_goes_back_to_ready_and_nothing_starts_after_it(
        tmp_path, fake_slurm, monkeypatch) -> None:
    monkeypatch.setenv("DFTFLOW_JOB_END", str(time.time() + 3600))
    monkeypatch.setenv("DFTFLOW_STOP_MARGIN", "60")
    project = tmp_path / "project"
    profile, launch = one_allocation(project, [vasp_like("LSTOP = .TRUE."), vasp_like()])
    assert fw_rocket(Path(launch["dir"])) == 0  # FireWorks' offline rocket, in-process; a clean stop is no fizzle
    assert "was stopped before the walltime" in (Path(launch["dir"]) / "rocket.json").read_text()
    monkeypatch.setenv("FAKE_SQUEUE", "")
    monkeypatch.setenv("FAKE_SACCT", "COMPLETED\n")
    status = fw_project.status(project, profile)
    assert {r["uid"]: r["state"] for r in status["jobs"]} == {"f0": "READY", "f1": "READY"}
    with open_launchpad(profile.fireworks, project) as lp:
        [stopped] = [fw_engine.fizzle_reason(x) for x in lp.launches.find({"state": "FIZZLED"})]
    assert stopped.startswith("stopped cleanly: STOPCAR (LSTOP = .TRUE.)")


def test_the_offline_rocket_runs_fireworks_own_rocket_and_recovery_completes_it(tmp_path, fake_slurm,
                                                                               monkeypatch) -> None:
    project = tmp_path / "project"
    profile, launch = one_allocation(project, [record(str(tmp_path / "m"), 7)])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    import fireworks.core.rocket as fw_rocket_module

    ping = fw_rocket_module.do_ping

    def slow_ping(*args):  # the ping thread's last write comes late, as it can on a busy node
        if threading.current_thread() is not threading.main_thread():
            time.sleep(1.0)
        ping(*args)

    monkeypatch.setattr(fw_rocket_module, "do_ping", slow_ping)
    assert fw_rocket(Path(launch["dir"])) == 0
    [rocket] = json.loads((Path(launch["dir"]) / "launch.json").read_text())["rockets"]
    # FireWorks' ping thread writes once more when stopped: into the job directory, not where the rocket started
    time.sleep(1.5)
    assert (Path(rocket["dir"]) / "FW_ping.json").exists() and list((tmp_path / "cwd").iterdir()) == []
    assert json.loads((Path(rocket["dir"]) / "FW_offline.json").read_text())["state"] == "COMPLETED"
    monkeypatch.setenv("FAKE_SACCT", "COMPLETED\n")
    [row] = fw_project.status(project, profile)["jobs"]
    assert row["state"] == "COMPLETED" and row["output"] == {"value": 7, "pid": os.getpid()}
    assert (tmp_path / "m").read_text().split()[2] == Path(rocket["dir"]).name  # ran in its job directory
    # its output document went to the workflow's JSON file, written by rename (no temporary left)
    assert "dftflow.execution.fw_store" in (Path(rocket["dir"]) / "FW.json").read_text()
    assert [p.name for p in (project / "outputs").iterdir()] == ["f0.json"]


def _iso_ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def _last_pinged(lp, launch_id: int, seconds: float) -> None:
    """The launch's RUNNING state as if it had started and last pinged ``seconds`` ago."""
    doc = lp.launches.find_one({"launch_id": launch_id}, {"state_history": 1})
    history = [{**h, "created_on": _iso_ago(seconds), "updated_on": _iso_ago(seconds)} if h["state"] == "RUNNING"
               else h for h in doc["state_history"]]
    lp.launches.update_one({"launch_id": launch_id}, {"$set": {"state_history": history}})


def test_a_run_that_stopped_pinging_outside_the_allocations_is_lost_and_retry_reruns_it(tmp_path, fake_slurm,
                                                                                        monkeypatch) -> None:
    """FireWorks' detect_lostruns at status: only for RUNNING launches no active allocation of dftflow holds."""
    five_hours = 5 * 3600
    project = tmp_path / "project"
    # dftflow's own allocation, still RUNNING in squeue; its rocket's last ping (recovered from FW_ping.json) is old
    profile, launch = one_allocation(project, [record(str(tmp_path / "m"), 0)])
    from fireworks import FWorker  # after the first opening: FireWorks imported with mongomock's client
    from fireworks.queue.queue_launcher import setup_offline_job
    from jobflow import Flow

    [rocket] = json.loads((Path(launch["dir"]) / "launch.json").read_text())["rockets"]
    offline = Path(rocket["dir"]) / "FW_offline.json"
    offline.write_text(json.dumps({**json.loads(offline.read_text()), "started_on": _iso_ago(five_hours)}))
    (Path(rocket["dir"]) / "FW_ping.json").write_text(json.dumps({"ping_time": _iso_ago(five_hours)}))
    monkeypatch.setenv("FAKE_SQUEUE", "4242 RUNNING\n")
    items = [(uid, lambda i=i: Flow([record(str(tmp_path / "m"), i)])) for i, uid in
             enumerate(["lost", "alive", "elsewhere", "gone"], start=1)]
    with open_launchpad(profile.fireworks, project) as lp:
        assert fw_engine.add_workflows(lp, project, items) == 4

        def site_worker(uid: str) -> FWorker:  # a site's own rlaunch/qlaunch for one of the project's fireworks
            return FWorker(name="site", query={"spec._dftflow.uid": uid})

        _, lost_launch = lp.checkout_fw(site_worker("lost"), str(tmp_path / "site"))
        _last_pinged(lp, lost_launch, five_hours)  # its node died: no ping since
        _, alive_launch = lp.checkout_fw(site_worker("alive"), str(tmp_path / "site"))
        _last_pinged(lp, alive_launch, 600)  # pings as rockets do (hourly by default)
        # offline rockets of the site's qlaunch -r, recovered once five hours ago; one pings on, one is gone
        offline_launches = {}
        for uid in ("elsewhere", "gone"):
            fw, offline_launches[uid] = lp.reserve_fw(site_worker(uid), str(tmp_path / uid))
            (tmp_path / uid).mkdir()
            with monkeypatch.context() as m:
                m.chdir(tmp_path / uid)
                setup_offline_job(lp, fw, offline_launches[uid])
            path = tmp_path / uid / "FW_offline.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "started_on": _iso_ago(five_hours)}))
            _last_pinged(lp, offline_launches[uid], five_hours)
            with pytest.warns(UserWarning, match="FW_ping.json"):  # none written yet
                lp.recover_offline(offline_launches[uid])
            _last_pinged(lp, offline_launches[uid], five_hours)
        (tmp_path / "elsewhere" / "FW_ping.json").write_text(json.dumps({"ping_time": _iso_ago(60)}))
        (tmp_path / "gone" / "FW_ping.json").write_text(json.dumps({"ping_time": _iso_ago(five_hours)}))
    status = fw_project.status(project, profile)
    jobs = {r["uid"]: r for r in status["jobs"]}
    assert {uid: r["state"] for uid, r in jobs.items()} == \
        {"f0": "RUNNING", "lost": "FIZZLED", "alive": "RUNNING", "elsewhere": "RUNNING", "gone": "FIZZLED"}
    for uid in ("lost", "gone"):
        assert re.fullmatch(r"lost: no ping for 1800[0-9] s \(FireWorks detect_lostruns, fireworks.lost_after_s = "
                            r"14400\)", jobs[uid]["error"]), jobs[uid]["error"]
    assert [r["uid"] for r in status["failures"]] == ["lost", "gone"]
    with open_launchpad(profile.fireworks, project) as lp:
        # the allocation's rocket has pinged no more recently (FW_ping.json, recovered): squeue has it, it is not lost
        launch_ids = [d["launch_id"] for d in lp.launches.find({"fw_id": launch["fw_ids"][0]})]
        assert lp.detect_lostruns(expiration_secs=4 * 3600)[0] == launch_ids
        # the site's offline rocket that pings on was recovered first; the one that is gone is forgotten
        [running] = [h for h in lp.launches.find_one({"launch_id": offline_launches["elsewhere"]})["state_history"]
                     if h["state"] == "RUNNING"]
        assert running["updated_on"] > _iso_ago(120)
        assert lp.offline_runs.find_one({"launch_id": offline_launches["gone"]})["deprecated"] is True
    # what the lost offline rocket writes late is not applied: one result per job
    path = tmp_path / "gone" / "FW_offline.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "state": "COMPLETED", "completed_on": _iso_ago(0),
                                "fwaction": {"stored_data": {}, "exit": False}}))
    assert {r["uid"]: r["state"] for r in fw_project.status(project, profile)["jobs"]}["gone"] == "FIZZLED"
    again = fw_project.retry(project, profile)
    assert again["requeued"] == 2
    assert sorted(x["fw_ids"][0] for x in again["launched"]) == [jobs["lost"]["fw_id"], jobs["gone"]["fw_id"]]
    rows = {r["uid"]: r for r in fw_project.jobs(project, profile)}
    assert rows["lost"]["state"] == rows["gone"]["state"] == "RESERVED" and rows["lost"]["attempts"] == 2
    with open_launchpad(profile.fireworks, project) as lp:  # the lost launch, archived with its reason
        assert fw_engine.fizzle_reason(lp.launches.find_one({"launch_id": lost_launch})).startswith("lost: no ping")
        assert lp.fireworks.find_one({"fw_id": jobs["lost"]["fw_id"]})["archived_launches"] == [lost_launch]


def test_lost_after_must_cover_fireworks_ping_interval() -> None:
    with pytest.raises(ValueError, match="lost_after_s"):
        FireworksSettings(launchpad="mongomock:launchpad.json", lost_after_s=600)
    assert FireworksSettings(launchpad="mongomock:launchpad.json").lost_after_s == 4 * 3600


# -- through SLURM -------------------------------------------------------------------------------


@pytest.fixture()
def on_slurm(cluster, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vasp_double) -> dict:
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return {"profile": write_profile(tmp_path / "profile.yaml"), "poscar": si_poscar(shared, tmp_path / "Si.vasp"),
            "project": tmp_path / "project", "double": vasp_double}


def run_to_the_end(project: Path, profile: Path, timeout: float = 300) -> dict:
    """status (recover_offline) and submit again until no allocation is active and nothing is READY."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = cli("status", "-p", str(project))
        active = [x for x in status["launches"] if x["state"] == "SUBMITTED"]
        if not active:
            if not status["counts"]["READY"]:
                return status
            cli("submit", "-p", str(project), "--profile", str(profile), *FLOW)
        time.sleep(2)
    raise AssertionError(f"not finished within {timeout} s: {status}")


def test_relax_static_completes_through_slurm_as_the_embedded_engine_computes_it(on_slurm, tmp_path: Path) -> None:
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs, run_workers
    from dftflow.vasp.jobs import vasp_flow

    env = on_slurm["double"]()
    project = on_slurm["project"]
    out = cli("submit", str(on_slurm["poscar"]), "-p", str(project), "--profile", str(on_slurm["profile"]), *FLOW)
    assert out["workflows_added"] == 1 and len(out["launched"]) == 1 and out["launched"][0]["slurm_id"]
    status = run_to_the_end(project, on_slurm["profile"])
    assert status["counts"]["COMPLETED"] == 2, status
    assert [x["slurm_state"] for x in status["launches"]] == ["COMPLETED", "COMPLETED"]  # relax, then static
    jobs = {j["job"]: j for j in status["jobs"]}
    # the same flow through the embedded engine (local worker), on the same double
    embedded = tmp_path / "embedded"
    from pymatgen.core import Structure

    queue = JobQueue(embedded / "jobs.sqlite")
    queue.add_flow("Si", flow_jobs(vasp_flow(Structure.from_file(on_slurm["poscar"]), "Si", relax_set="mp-relax",
                                             static_set="mp-static")))
    queue.close()
    assert run_workers(embedded / "jobs.sqlite", embedded, 1, env=env)["COMPLETED"] == 2
    queue = JobQueue(embedded / "jobs.sqlite")
    reference = {j["name"]: j["output"]["output"] for j in queue.jobs()}
    queue.close()
    for name in ("relax", "static"):
        mine, ref = jobs[name]["output"], reference[name]
        for key in ("energy", "energy_per_atom", "structure", "scf_steps", "ionic_steps", "magnetization",
                    "converged_electronic", "converged_ionic", "incar", "kpoints"):
            assert mine[key] == ref[key], (name, key)
        assert Path(mine["dir"]).is_relative_to(project) and Path(mine["dir"], "vasprun.xml").exists()
    assert jobs["static"]["energy"] == reference["static"]["energy"]
    assert Path(jobs["static"]["output"]["chgcar"]).stat().st_size > 1000  # the density stays on disk
    assert "chgcar" not in json.dumps(launchpad_fireworks(project)).lower()
    # a second submit adds nothing and launches nothing
    again = cli("submit", str(on_slurm["poscar"]), "-p", str(project), "--profile", str(on_slurm["profile"]), *FLOW)
    assert again["workflows_added"] == 0 and again["launched"] == []


def test_a_fizzled_job_shows_its_reason_and_retry_reruns_it(on_slurm, shared: Path) -> None:
    base = shared / SI
    # the double knows only the relaxations: the static's INCAR matches no reference run and "VASP" fails
    on_slurm["double"](references=[{"dir": str(base / "GGA_Relax_1"), "match": {"NSW": 99}},
                                   {"dir": str(base / "GGA_Relax_2"), "match": {"NSW": 99}}])
    project, profile = on_slurm["project"], on_slurm["profile"]
    cli("submit", str(on_slurm["poscar"]), "-p", str(project), "--profile", str(profile), *FLOW)
    status = run_to_the_end(project, profile)
    assert status["counts"]["COMPLETED"] == 1 and status["counts"]["FIZZLED"] == 1, status
    [failure] = status["failures"]
    assert failure["job"] == "static" and failure["state"] == "FIZZLED"
    assert "no reference run matches" in failure["error"], failure["error"]
    text = CliRunner().invoke(app, ["status", "-p", str(project)])
    assert text.exit_code == 0 and "FIZZLED" in text.output and "no reference run matches" in text.output
    on_slurm["double"]()  # the full reference set: the rerun succeeds
    again = cli("retry", "-p", str(project))
    assert again["requeued"] == 1 and len(again["launched"]) == 1
    status = run_to_the_end(project, profile)
    assert status["counts"]["COMPLETED"] == 2 and status["failures"] == [], status
    static = next(j for j in status["jobs"] if j["job"] == "static")
    assert static["attempts"] == 2 and static["energy"] is not None


@pytest.mark.parametrize("what", ["accel_eval", "nscf_eval"])
def test_evaluations_refuse_the_fireworks_engine(tmp_path: Path, what: str) -> None:
    from dftflow.accel.run import submit_allocations

    with pytest.raises(InputError, match=f"{what.replace('_', '-')} runs its jobs on the embedded engine"):
        submit_allocations(tmp_path, str(write_profile(tmp_path / "profile.yaml")), dry_run=True, what=what)
    assert not (tmp_path / "submit.json").exists()


def test_an_injected_vasp_error_is_corrected_by_custodian_inside_the_offline_rocket(on_slurm, tmp_path: Path) -> None:
    on_slurm["double"](inject={"GGA_Relax_1": {"stdout": "Tetrahedron method fails for NKPT<4", "times": 1,
                                               "allow": ["ISMEAR", "SIGMA"]}})
    project, profile = on_slurm["project"], on_slurm["profile"]
    cli("submit", str(on_slurm["poscar"]), "-p", str(project), "--profile", str(profile), *FLOW)
    status = run_to_the_end(project, profile)
    assert status["counts"]["COMPLETED"] == 2 and status["failures"] == [], status
    relax = next(j for j in status["jobs"] if j["job"] == "relax")
    assert relax["attempts"] == 1  # corrected inside the one launch, not by a FireWorks rerun
    handled = [c for run in relax["output"]["corrections"] for c in (run if isinstance(run, list) else [run])]
    assert any("tet" in json.dumps(c) for c in handled), relax["output"]["corrections"]
    assert "ISMEAR = 0" in (Path(relax["output"]["dir"]) / "INCAR").read_text()  # custodian's fix, rerun with it
    assert (tmp_path / "double-state" / "GGA_Relax_1.runs").read_text() == "2"


def test_a_job_killed_at_the_walltime_fizzles_with_timeout_and_retry_completes_it(on_slurm, tmp_path: Path) -> None:
    """A 1-minute allocation whose "VASP" ignores the STOPCAR: SLURM kills it (TIMEOUT), retry continues it."""
    project = on_slurm["project"]
    profile = write_profile(tmp_path / "short.yaml", walltime="00:01:00")
    on_slurm["double"](sleep={"GGA_Relax_1": 600}, ignore_stopcar=True)  # runs into SLURM's time limit
    cli("submit", str(on_slurm["poscar"]), "-p", str(project), "--profile", str(profile), *FLOW)
    status = run_to_the_end(project, profile, timeout=240)
    assert [x["slurm_state"] for x in status["launches"]] == ["TIMEOUT"], status["launches"]
    [failure] = status["failures"]
    assert failure["job"] == "relax" and failure["state"] == "FIZZLED"
    assert "reached its time limit (TIMEOUT) while this job ran" in failure["error"], failure["error"]
    assert status["counts"]["WAITING"] == 1  # the static waits for its relaxation
    on_slurm["double"]()  # no more sleeping: the rerun finishes
    again = cli("retry", "-p", str(project))
    assert again["requeued"] == 1 and len(again["launched"]) == 1
    status = run_to_the_end(project, profile)
    assert status["counts"]["COMPLETED"] == 2 and status["failures"] == [], status
    jobs = {j["job"]: j for j in status["jobs"]}
    assert jobs["relax"]["attempts"] == 2 and jobs["static"]["attempts"] == 1
    # the rerun continued the killed relaxation from the CONTCAR it left in its (fixed) job directory
    assert "continued from the CONTCAR of an interrupted attempt" in jobs["relax"]["output"]["notes"]
    with open_launchpad(FireworksSettings(launchpad="mongomock:launchpad.json"), project) as lp:
        relax = lp.fireworks.find_one({"name": "relax"})
        [archived] = relax["archived_launches"]
        assert "TIMEOUT" in fw_engine.fizzle_reason(lp.launches.find_one({"launch_id": archived}))


def test_workflows_over_concurrent_allocations_are_neither_lost_nor_duplicated(on_slurm, tmp_path: Path) -> None:
    """Six workflows, two submit processes at once, two fireworks per allocation, three allocations at a time."""
    on_slurm["double"]()
    project = on_slurm["project"]
    profile = write_profile(tmp_path / "packed.yaml", pack=2, max_queued=3)
    firsts = submit_at_once(on_slurm["poscar"], tmp_path, project, profile, timeout=300)
    assert sum(o["workflows_added"] for o in firsts) == 6
    assert 1 <= sum(len(o["launched"]) for o in firsts) <= 3  # max_queued holds across both submits
    status = run_to_the_end(project, profile, timeout=600)
    assert status["counts"]["COMPLETED"] == 12 and status["failures"] == [], status["counts"]
    assert {j["uid"] for j in status["jobs"]} == {f"Si{i}" for i in range(6)}
    assert all(j["attempts"] == 1 for j in status["jobs"])  # every job ran once
    assert all(x["slurm_state"] == "COMPLETED" for x in status["launches"])
    # on the LaunchPad: 12 fireworks, one completed launch each, no launch left over
    with open_launchpad(FireworksSettings(launchpad="mongomock:launchpad.json"), project) as lp:
        fws = list(lp.fireworks.find({}, {"fw_id": 1, "state": 1, "launches": 1, "archived_launches": 1}))
        assert len(fws) == 12 and all(f["state"] == "COMPLETED" for f in fws)
        assert all(len(f["launches"]) == 1 and not f.get("archived_launches") for f in fws)
        launches = list(lp.launches.find({}, {"launch_id": 1, "fw_id": 1, "state": 1}))
        assert sorted(x["fw_id"] for x in launches) == sorted(f["fw_id"] for f in fws)
        assert all(x["state"] == "COMPLETED" for x in launches)
        assert lp.workflows.count_documents({}) == 6
        reserved = [fw_id for a in lp.db["dftflow_allocations"].find() for fw_id in a["fw_ids"]]
    assert sorted(reserved) == sorted(f["fw_id"] for f in fws)  # each firework in exactly one allocation
    # on disk: one output document per job, one "VASP" run per job
    for i in range(6):
        docs = json.loads(fw_engine.outputs_file(project, f"Si{i}").read_text())
        assert sorted(d["uuid"] for d in docs) == sorted(j["job_uuid"] for j in status["jobs"]
                                                         if j["uid"] == f"Si{i}")
    state = tmp_path / "double-state"
    assert int((state / "GGA_Relax_1.runs").read_text()) == 6
    assert int((state / "GGA_Static.runs").read_text()) == 6


def test_fireworks_commonadapter_submits_the_allocations_capped_by_max_queued_and_njobs_queue(
        on_slurm, cluster, tmp_path: Path) -> None:
    """Held allocations (``--hold`` among the profile's extra directives): they only fill the queue, none runs."""
    project = on_slurm["project"]
    copies = []
    for i in range(3):
        p = tmp_path / f"Si{i}.vasp"
        p.write_bytes(on_slurm["poscar"].read_bytes())
        copies.append(str(p))
    held = write_profile(tmp_path / "held.yaml", max_queued=2, modules=["vasp/6.4"],
                         extra_directives=["--mem=100M", "--hold"])
    out = cli("submit", *copies, "-p", str(project), "--profile", str(held), *FLOW)
    assert out["workflows_added"] == 3 and len(out["launched"]) == 2  # max_queued: 2 of the 3 READY relaxations
    ids = [x["slurm_id"] for x in out["launched"]]
    queue = cluster.run("squeue", "-h", "-o", "%i %T %r").stdout.split("\n")
    assert sorted(line.split() for line in queue if line) == sorted([i, "PENDING", "JobHeldUser"] for i in ids)
    for launch in out["launched"]:
        # what SLURM holds is FireWorks' CommonAdapter script: its template, the profile's partition and modules
        job = cluster.run("scontrol", "show", "job", launch["slurm_id"]).stdout
        assert f"Command={launch['dir']}/FW_submit.script" in job and "Partition=debug" in job
        assert "TimeLimit=00:05:00" in job and "MinMemoryNode=100M" in job  # #SBATCH lines from pre_rocket too
        assert f"StdOut={launch['dir']}/dftflow-fw-{launch['launch_id'][-8:]}-{launch['slurm_id']}.out" in job
        script = cluster.run("scontrol", "write", "batch_script", launch["slurm_id"], "-").stdout
        assert script.startswith("#!/bin/bash -l") and "# CommonAdapter (SLURM) completed writing Template" in script
        assert "module load vasp/6.4" in script and f"cd {launch['dir']}\nexec " in script
        assert f"-m dftflow fw-rocket {launch['dir']}" in script
    assert cli("submit", "-p", str(project), "--profile", str(held), *FLOW)["launched"] == []  # still 2 queued
    # njobs_queue counts all of this user's jobs in the partition, as qlaunch's does (get_njobs_in_queue)
    cluster.run("sbatch", "--hold", "--mem=10M", "-p", "debug", "-o", "/dev/null", "--wrap", "sleep 1")
    roomy = {"max_queued": 10, "modules": ["vasp/6.4"], "extra_directives": ["--mem=100M", "--hold"]}
    full = write_profile(tmp_path / "full.yaml", fireworks={"njobs_queue": 3}, **roomy)
    assert cli("submit", "-p", str(project), "--profile", str(full), *FLOW)["launched"] == []
    room = write_profile(tmp_path / "room.yaml", fireworks={"njobs_queue": 4}, **roomy)
    [third] = cli("submit", "-p", str(project), "--profile", str(room), *FLOW)["launched"]
    ids.append(third["slurm_id"])
    status = cli("status", "-p", str(project))
    assert status["counts"]["RESERVED"] == 3 and status["counts"]["WAITING"] == 3
    # cancelled before they started: the reservations go back, nothing fizzles
    cluster.run("scancel", *ids)
    deadline = time.time() + 60
    while cluster.run("squeue", "-h", "-j", ",".join(ids), check=False).stdout.strip() and time.time() < deadline:
        time.sleep(1)
    status = cli("status", "-p", str(project))
    assert status["counts"]["READY"] == 3 and status["failures"] == [], status["counts"]
    assert sorted(x["slurm_state"] for x in status["launches"]) == ["CANCELLED"] * 3
    cluster.run("scancel", "-u", "root")


# -- moving an embedded project onto the LaunchPad ------------------------------------------------


def run_embedded(project: Path, uid: str, names: tuple[str, ...]) -> None:
    """What an embedded allocation does for one workflow, in-process: claim it, run ``names``, release the rest."""
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import execute_job, job_dir_for

    queue = JobQueue(project / "jobs.sqlite")
    try:
        for job in queue.claim_flows([uid], "test-allocation"):
            if job["name"] in names:
                out = execute_job(job["payload"], queue.outputs(job["parents"]),
                                  job_dir_for(project, uid, job["name"], job["uuid"]))
                assert queue.complete(job["uuid"], "test-allocation", out)
        queue.release_claims("test-allocation", "AUTO")
    finally:
        queue.close()


def test_fw_migrate_refuses_a_project_with_jobs_still_running_and_changes_nothing(shared: Path,
                                                                                 tmp_path: Path) -> None:
    from dftflow.execution.queue import JobQueue

    project = tmp_path / "project"
    profile = write_profile(tmp_path / "profile.yaml")
    res = CliRunner().invoke(app, ["fw-migrate", "-p", str(project), "--profile", str(profile)])
    assert isinstance(res.exception, InputError) and "jobs.sqlite: not found" in str(res.exception)
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(yaml.safe_dump({**yaml.safe_load(profile.read_text()), "engine": "embedded",
                                        "store": {"type": "file"}}))
    poscar = si_poscar(shared, tmp_path / "Si.vasp")
    cli("submit", str(poscar), "-p", str(project), "--profile", str(embedded), *FLOW, "--dry-run")
    queue = JobQueue(project / "jobs.sqlite")
    queue.claim_flows(["Si"], "an-allocation")  # held by an allocation that has not ended
    queue.close()
    res = CliRunner().invoke(app, ["fw-migrate", "-p", str(project), "--profile", str(profile)])
    assert isinstance(res.exception, InputError), res.output
    assert "jobs of 1 workflow(s) are still RUNNING in embedded allocations (Si)" in str(res.exception)
    assert not (project / "launchpad.json").exists() and not (project / "outputs").exists()
    assert json.loads((project / "submit.json").read_text())["engine"] == "embedded"


def test_an_embedded_project_moves_onto_the_launchpad_keeping_what_it_completed(on_slurm, tmp_path: Path) -> None:
    """Si0 done, Si1 relaxed, Si2 not started on the embedded engine; fw-migrate; SLURM runs only what is left."""
    from dftflow.execution.queue import JobQueue

    on_slurm["double"](chgcar_outcar=True)  # harvestable statics
    project = on_slurm["project"]
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(yaml.safe_dump({**yaml.safe_load(on_slurm["profile"].read_text()), "engine": "embedded",
                                        "store": {"type": "file"}}))
    copies = []
    for i in range(3):
        p = tmp_path / f"Si{i}.vasp"
        p.write_bytes(on_slurm["poscar"].read_bytes())
        copies.append(str(p))
    assert cli("submit", *copies, "-p", str(project), "--profile", str(embedded), *FLOW,
               "--dry-run")["workflows_added"] == 3
    run_embedded(project, "Si0", ("relax", "static"))
    run_embedded(project, "Si1", ("relax",))
    queue = JobQueue(project / "jobs.sqlite")
    before = {(j["flow_id"], j["name"]): j for j in queue.jobs()}
    queue.close()
    assert [before[("Si0", "static")]["state"], before[("Si1", "relax")]["state"]] == ["COMPLETED"] * 2
    # a profile of the wrong engine is refused, naming it
    res = CliRunner().invoke(app, ["fw-migrate", "-p", str(project), "--profile", str(embedded)])
    assert isinstance(res.exception, InputError) and "needs a profile with engine: fireworks" in str(res.exception)

    profile = on_slurm["profile"]
    out = cli("fw-migrate", "-p", str(project), "--profile", str(profile))
    assert out == {"workflows_added": 3, "completed_from_embedded": 3, "to_run": 3, "workflows": 3, "jobs": 6}
    assert cli("fw-migrate", "-p", str(project), "--profile", str(profile))["workflows_added"] == 0  # idempotent
    fws = launchpad_fireworks(project)
    assert len(fws) == 6
    assert {(f["spec"]["_dftflow"]["uid"], f["name"]): f["state"] for f in fws} == {
        ("Si0", "relax"): "COMPLETED", ("Si0", "static"): "COMPLETED", ("Si1", "relax"): "COMPLETED",
        ("Si1", "static"): "READY", ("Si2", "relax"): "READY", ("Si2", "static"): "WAITING"}
    status = cli("status", "-p", str(project))
    assert status["engine"] == "fireworks"
    rows = {(j["uid"], j["job"]): j for j in status["jobs"]}
    assert rows[("Si0", "static")]["energy"] == before[("Si0", "static")]["output"]["output"]["energy"]
    assert rows[("Si1", "relax")]["output"] == before[("Si1", "relax")]["output"]["output"]
    # the project is on the LaunchPad now: the embedded profile is refused
    res = CliRunner().invoke(app, ["submit", "-p", str(project), "--profile", str(embedded), *FLOW])
    assert isinstance(res.exception, InputError) and "on the fireworks engine" in str(res.exception)

    state = tmp_path / "double-state"
    runs_before = {name: int((state / f"{name}.runs").read_text()) for name in ("GGA_Relax_1", "GGA_Static")}
    assert runs_before == {"GGA_Relax_1": 2, "GGA_Static": 1}
    cli("submit", "-p", str(project), "--profile", str(profile), *FLOW)
    status = run_to_the_end(project, profile)
    assert status["counts"]["COMPLETED"] == 6 and status["failures"] == [], status["counts"]
    # only what had not run was run: Si2's relax, and the statics of Si1 (from the embedded relax) and Si2
    assert int((state / "GGA_Relax_1.runs").read_text()) == 3
    assert int((state / "GGA_Static.runs").read_text()) == 3
    rows = {(j["uid"], j["job"]): j for j in status["jobs"]}
    assert rows[("Si1", "static")]["energy"] == rows[("Si0", "static")]["energy"]
    # harvest reads the LaunchPad: the three statics, the embedded one among them
    dataset = tmp_path / "ds"
    harvested = cli("harvest", str(project), "-o", str(dataset))
    assert harvested["stored"] == 3, harvested
