"""``dftflow dashboard`` on a real small project, driven in headless Chromium over the DevTools protocol.

The project is made by dftflow itself: ``build-dataset`` of a recipe (the demo's crystals plus a
broken CIF and a charge-imbalanced one) through import → screen → dedup → select, a real harvest of
the reference CHGCARs (one of them cut short, so quarantined), a few real training steps, an
accel-eval report written by the report code, and a job queue made through ``JobQueue`` in which a
job completes while the page is open.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.dashboard.cdp import Browser

REPO = Path(__file__).resolve().parents[2]
FAILURE = "SCF did not converge in 60 iterations (dE 3.1e-03 eV)"


# -- the project -------------------------------------------------------------------------------
def _cif_mgf(path: Path) -> None:
    """Rock-salt 'MgF': Mg2+ and F- cannot balance, so the electroneutrality filter rejects it."""
    from pymatgen.core import Lattice, Structure

    Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.3), ["Mg", "F"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(path))


def _build(root: Path, tmp: Path) -> dict:
    extra = tmp / "extra"
    extra.mkdir()
    (extra / "broken.cif").write_text("data_broken\n_cell_length_a 4.0\nthis is not a CIF loop\n")
    _cif_mgf(extra / "MgF.cif")
    recipe = tmp / "dash.yaml"
    recipe.write_text(json.dumps({
        "name": "dash", "workers": 1,
        "sources": [{"type": "cif", "path": str(REPO / "workflows" / "structures" / "demo"), "label": "demo"},
                    {"type": "cif", "path": str(extra), "label": "extra"}],
        "screening": {"max_atoms": 40, "max_elements": 10,
                      "electroneutrality": {"oxidation_states_set": "icsd24", "mixed_valence": False}},
        "selection": {"hse": {"size": 4, "max_atoms": 19, "max_elements": 3, "seed": 0}},
    }))
    run = subprocess.run([sys.executable, "-m", "dftflow", "build-dataset", str(recipe), "--project", str(root),
                          "--workers", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _harvest(root: Path, shared: Path, tmp: Path) -> dict:
    from dftflow.dataset.harvest import from_directory, harvest, info

    src = tmp / "runs"
    for name in ("Li_nospin", "Li_spin"):
        (src / name).mkdir(parents=True)
        shutil.copy(shared / "fixtures" / "chgcar" / f"{name}.gz", src / name / "CHGCAR.gz")
    si = shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs"
    (src / "Si").mkdir()
    for name in ("CHGCAR.gz", "OUTCAR.gz"):
        shutil.copy(si / name, src / "Si" / name)
    text = gzip.decompress((src / "Li_nospin" / "CHGCAR.gz").read_bytes()).decode()
    (src / "truncated").mkdir()
    (src / "truncated" / "CHGCAR").write_text(text[: len(text) // 2])
    summary = harvest(list(from_directory(src)), root / "dataset")
    assert summary["stored"] == 3 and summary["quarantined"] == 1
    return info(root / "dataset")


def _train(root: Path) -> None:
    from dftflow.ml.train import TrainConfig, train

    train(TrainConfig.model_validate({
        "model": {"num_interactions": 1, "mul": 8, "lmax": 1, "num_basis": 6, "radial_neurons": 8},
        "data": {"dataset": str(root / "dataset"), "train_ids": ["runs|Si"], "val_ids": ["runs|Si"],
                 "n_probes": 32, "batch_size": 1, "val_probes": 200},
        "optim": {"max_steps": 6, "val_every": 2, "checkpoint_every": 6}, "out": str(root / "model")}))


def _accel_report(root: Path) -> dict:
    from dftflow.accel.report import write_report

    results = []
    for uid, steps in (("demo:Si.cif", (14, 11, 7)), ("demo:C_diamond.cif", (16, 12, 8))):
        for arm, n in zip(("default", "ml", "oracle"), steps):
            results.append({"uid": uid, "arm": arm, "steps": n, "n_scf": n - 3, "wall_s": 2.0 * n,
                            "energy": -10.8 - (arm == "ml") * 1e-5, "natoms": 2, "metal": False,
                            "magnetic": False, "gap": 0.6})
    return write_report(results, ("default", "ml", "oracle"), root / "accel", settings={"ecut": 300})


def _nscf_report(root: Path) -> dict:
    from dftflow.nscf.report import write_report

    results = []
    for uid, shift in (("demo:Si.cif", 0.002), ("demo:GaAs.cif", 0.03)):
        base = {"uid": uid, "natoms": 2, "metal": False, "energy_per_atom": -5.4, "gap_direct": 2.5,
                "gap_indirect": 0.6, "band_energy_per_atom": -1.2, "forces": [[0, 0, 0], [0, 0, 0]],
                "n_iter": 12, "wall_s": 8.0}
        results.append({**base, "start": "scf"})
        results.append({**base, "start": "default", "energy_per_atom": -5.4 + shift, "gap_indirect": 0.6 + shift,
                        "forces": [[shift, 0, 0], [-shift, 0, 0]], "n_iter": 1, "wall_s": 1.0})
    (root / "nscf").mkdir()
    return write_report(results, ("default",), root / "nscf", settings={"ecut": 300})


class Jobs:
    """A jobs.sqlite made through dftflow's JobQueue: done, failed (with an error.txt), running, waiting."""

    def __init__(self, root: Path) -> None:
        from dftflow.execution.queue import JobQueue, NewJob
        from dftflow.execution.worker import job_dir_for

        self.queue = JobQueue(root / "jobs.sqlite")
        for uid in ("demo:Si.cif", "demo:NaCl.cif", "demo:GaAs.cif", "demo:MgO.cif"):
            static = NewJob(str(uuid.uuid4()), "gpaw_pbe_static", {"uid": uid}, [])
            hse = NewJob(str(uuid.uuid4()), "gpaw_hse_static", {"uid": uid}, [static.uuid])
            self.queue.add_flow(uid, [static] if uid == "demo:Si.cif" else [static, hse], max_attempts=1)
        # claimed in queue order: Si's static is done, NaCl's failed with its logs (its hse waits for
        # ever), GaAs's is running (it completes during a test, which readies its hse); MgO's is ready
        for _ in range(3):
            job = self.queue.claim("w1")
            assert job is not None
            if job.flow_id == "demo:Si.cif":
                assert self.queue.complete(job.uuid, "w1", {"output": {"energy": -10.8, "n_scf": 11}})
            elif job.flow_id == "demo:NaCl.cif":
                folder = job_dir_for(root, job.flow_id, job.name, job.uuid)
                folder.mkdir(parents=True)
                (folder / "error.txt").write_text(f"Traceback (most recent call last):\nRuntimeError: {FAILURE}\n")
                (folder / "gpaw.txt").write_text("  ___ ___ ___ _ _ _\n GPAW log of NaCl\n")
                assert self.queue.fail(job.uuid, "w1", FAILURE)
                self.failed_logs = [f"{folder.relative_to(root).as_posix()}/{n}" for n in ("error.txt", "gpaw.txt")]
            else:
                self.running = job
        assert self.running.flow_id == "demo:GaAs.cif"

    def finish_running(self) -> None:
        assert self.queue.complete(self.running.uuid, "w1", {"output": {"energy": -8.1, "n_scf": 13}})


@pytest.fixture(scope="module")
def project(shared: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dash")
    root = tmp / "project"
    summary = _build(root, tmp)
    dataset = _harvest(root, shared, tmp)
    _train(root)
    report = _accel_report(root)
    nscf = _nscf_report(root)
    jobs = Jobs(root)
    # links that lead out of the project: a file and a directory
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the dashboard")
    os.symlink(outside / "secret.txt", root / "figures" / "escape.png")
    os.symlink(outside, root / "elsewhere")
    yield {"root": root, "summary": summary, "dataset": dataset, "report": report, "nscf": nscf, "jobs": jobs,
           "tmp": tmp}
    jobs.queue.close()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` (links not followed) with size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


class Dashboard:
    """``dftflow dashboard`` as a user starts it (a subprocess of the real CLI)."""

    def __init__(self, root: Path, *args: str) -> None:
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server can never block on it
        self.proc = subprocess.Popen([sys.executable, "-m", "dftflow", "dashboard", "-p", str(root), "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     env={**os.environ, "COLUMNS": "400"})
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            self.stderr.seek(0)
            raise AssertionError(f"no address printed: {line!r} {self.stderr.read().decode(errors='replace')}")
        self.url = match.group(1)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A raw GET: the path is sent exactly as given (no client-side normalisation of ``..``)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.putrequest("GET", path, skip_host=headers is not None and "Host" in headers)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def dashboard(project):
    server = Dashboard(project["root"], "--poll", "1")
    yield server
    server.stop()




def _cells(browser: Browser, selector: str) -> list[list[str]]:
    return browser.evaluate(f"""Array.from(document.querySelectorAll({json.dumps(selector + ' tbody tr')}))
        .map((tr) => Array.from(tr.cells).map((td) => td.textContent))""")


def _screenshot(browser: Browser, tmp: Path, name: str, selector: str | None = None) -> Path:
    """A PNG of the page or of one section; sections also into $DFTFLOW_DASHBOARD_SCREENSHOTS (docs/img) if set."""
    if selector is None:
        path = browser.screenshot(tmp / f"dashboard-{name}.png")
    else:
        rect = browser.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
            .getBoundingClientRect(); return [r.x, r.y + window.scrollY, r.width, r.height]; }})()""")
        data = browser.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                            clip={"x": rect[0], "y": rect[1], "width": rect[2], "height": min(rect[3], 4000),
                                  "scale": 1})["data"]
        import base64

        path = tmp / f"dashboard-{name}.png"
        path.write_bytes(base64.b64decode(data))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    if os.environ.get("DFTFLOW_DASHBOARD_SCREENSHOTS") and selector is not None:
        out = Path(os.environ["DFTFLOW_DASHBOARD_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


# -- the page in a browser ---------------------------------------------------------------------
def test_every_section_shows_the_projects_numbers(project, dashboard, browser) -> None:
    root, summary, dataset = project["root"], project["summary"], project["dataset"]
    before = _tree(root)
    browser.goto(dashboard.url)

    # funnel: the build's own funnel, row by row, and its figures loaded as images
    browser.wait_for("document.querySelector('#funnel-table')")
    rows = _cells(browser, "#funnel-table")
    assert [r[:4] for r in rows] == [[f["step"], str(f["entered"]), str(f["passed"]), str(f["failed"])]
                                     for f in summary["funnel"]]
    steps = {f["step"]: f for f in summary["funnel"]}
    assert steps["import"]["failed"] == 1 and steps["electroneutrality"]["failed"] == 1  # the two bad inputs
    reasons = browser.text("#funnel-reasons")
    assert "import:" in reasons and "electroneutrality:" in reasons and "dedup: duplicate" in reasons
    figures = browser.wait_for("""(() => { const imgs = Array.from(document.querySelectorAll('#funnel img'));
        return imgs.length && imgs.every((i) => i.complete && i.naturalWidth > 100)
            && imgs.map((i) => i.alt); })()""")
    assert sorted(figures) == sorted(f"figures/{p.name}" for p in (root / "figures").glob("*.png")
                                     if not p.is_symlink())
    assert "figures/escape.png" not in figures  # a link out of the project is not listed

    # candidates: every entry, then a search narrowing to the broken CIF with its outcome and reason
    browser.wait_for("document.querySelector('#candidates-table')")
    assert f"of {steps['import']['entered']} matching" in browser.text("#candidate-count")
    browser.evaluate("""(() => { const q = document.getElementById('candidate-query'); q.value = 'broken';
        q.dispatchEvent(new Event('input')); })()""")
    browser.wait_for("document.querySelectorAll('#candidates-table tbody tr').length === 1")
    (row,) = _cells(browser, "#candidates-table")
    assert row[0] == "extra:broken.cif" and row[3] == "import failed" and row[4]
    browser.evaluate("""(() => { const q = document.getElementById('candidate-query'); q.value = 'MgF';
        q.dispatchEvent(new Event('input')); })()""")
    browser.wait_for("document.querySelector('#candidates-table tbody tr td') && "
                     "document.querySelector('#candidates-table tbody tr td').textContent === 'extra:MgF.cif'")
    (row,) = _cells(browser, "#candidates-table")
    assert row[3] == "electroneutrality: fail" and row[4]

    # DFT jobs and failures, as the queue has them
    counts = project["jobs"].queue.counts()
    browser.wait_for("document.querySelector('#jobs-counts')")
    for state, n in counts.items():
        assert browser.text(f"#jobs-count-{state}") == str(n), state
    assert "demo:GaAs.cif" in browser.text("#jobs-running")
    failures = _cells(browser, "#failures-table")
    assert len(failures) == 1 and failures[0][0] == "demo:NaCl.cif" and failures[0][4] == FAILURE
    links = browser.evaluate("Array.from(document.querySelectorAll('#failures-table a.log'))"
                             ".map((a) => decodeURIComponent(a.getAttribute('href')))")
    assert links == ["/files/" + p for p in project["jobs"].failed_logs]
    text = browser.evaluate(f"fetch({json.dumps(links[0])}).then((r) => r.text())")
    assert FAILURE in text  # the log link serves the job's own error.txt

    # dataset: materials, quarantine with its reason, grid sizes
    browser.wait_for("document.querySelector('.dataset')")
    assert len(_cells(browser, ".dataset table.materials")) == dataset["materials"] == 3
    (q,) = _cells(browser, ".dataset table.quarantine")
    assert q[0] == "runs|truncated" and q[2] == dataset["quarantine"][0]["reason"] and "CHGCAR" in q[2]
    kv = browser.text(".dataset .kv")
    assert f"{dataset['grid_points_median']:,}" in kv
    shapes = _cells(browser, ".dataset table.grid-shapes")
    assert sum(int(n) for _, n in shapes) == 3

    # training: the curves have one point per log.csv row (loss) and per validation
    log = (root / "model" / "log.csv").read_text().splitlines()[1:]
    n_val = sum(1 for line in log if line.split(",")[-1])
    points = browser.evaluate("Array.from(document.querySelectorAll('.run svg.chart'))"
                              ".map((s) => s.getAttribute('data-points'))")
    assert points == [str(len(log)), str(n_val)] and len(log) == 6 and n_val == 3
    assert browser.evaluate("document.querySelectorAll('.run svg.chart path.line-loss').length") == 1

    # the accel-eval report: one row per material, its figures loaded
    report = project["report"]
    rows = _cells(browser, ".report[data-kind='accel-eval'] table.report-table")
    assert [r[0] for r in rows] == [m["uid"] for m in report["materials"]]
    header = browser.evaluate("Array.from(document.querySelectorAll("
                              "\".report[data-kind='accel-eval'] table.report-table th\")).map((t) => t.textContent)")
    ratio = rows[0][header.index("ratio_ml")]
    assert float(ratio) == pytest.approx(report["materials"][0]["ratio_ml"], rel=1e-3)
    browser.wait_for("""(() => {
        const imgs = Array.from(document.querySelectorAll(".report[data-kind='accel-eval'] img"));
        return imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth > 100); })()""")
    # the nscf-eval report: its errors per material and its figure
    nscf = project["nscf"]
    rows = _cells(browser, ".report[data-kind='nscf-eval'] table.report-table")
    header = browser.evaluate("Array.from(document.querySelectorAll("
                              "\".report[data-kind='nscf-eval'] table.report-table th\")).map((t) => t.textContent)")
    assert [r[0] for r in rows] == [m["uid"] for m in nscf["materials"]] == ["demo:GaAs.cif", "demo:Si.cif"]
    err = rows[0][header.index("gap_indirect_err_default")]
    assert float(err) == pytest.approx(nscf["materials"][0]["gap_indirect_err_default"], rel=1e-3)
    browser.wait_for("""(() => {
        const imgs = Array.from(document.querySelectorAll(".report[data-kind='nscf-eval'] img"));
        return imgs.length === 1 && imgs[0].complete && imgs[0].naturalWidth > 100; })()""")

    _screenshot(browser, project["tmp"], "overview")
    for name, selector in (("funnel", "#funnel"), ("jobs", "#jobs"), ("failures", "#failures"),
                           ("dataset", "#datasets"), ("training", "#training"), ("reports", "#reports")):
        _screenshot(browser, project["tmp"], name, selector)
    after = _tree(root)
    # the dashboard wrote nothing: only the test's own queue (open, in WAL mode) may differ
    ours = {"jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm"}
    assert {k: v for k, v in after.items() if k not in ours} == {k: v for k, v in before.items() if k not in ours}


def test_a_job_finishing_during_a_build_appears_without_a_reload(project, dashboard, browser) -> None:
    browser.goto(dashboard.url)
    browser.wait_for("document.querySelector('#jobs-count-COMPLETED')")
    browser.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloaded
    browser.evaluate("window.__failures = document.querySelector('#failures-table')")
    done = int(browser.text("#jobs-count-COMPLETED"))
    assert browser.text("#jobs-count-RUNNING") == "1"
    updated = browser.text("#jobs-updated")
    project["jobs"].finish_running()
    counts = project["jobs"].queue.counts()
    assert counts["COMPLETED"] == done + 1 and counts["RUNNING"] == 0 and counts["READY"] >= 1  # its hse is READY
    browser.wait_for(f"document.querySelector('#jobs-count-COMPLETED').textContent === '{done + 1}'", timeout=20)
    for state, n in counts.items():
        assert browser.text(f"#jobs-count-{state}") == str(n), state
    assert browser.evaluate("window.__sameDocument") == "yes"
    # the failures did not change, so their table was left as it was (a user scrolling it keeps the place)
    assert browser.evaluate("document.querySelector('#failures-table') === window.__failures")
    assert browser.text("#jobs-updated") != updated
    assert "nothing running" in browser.text("#jobs-running")
    assert "demo:GaAs.cif" in browser.text("#jobs-recent")
    # and the JSON the page polls says the same
    status, body = dashboard.get("/api/jobs")
    assert status == 200 and json.loads(body)["counts"] == counts


# -- safety ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2f..%2f..%2fetc%2fpasswd",
    "/files/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/files/figures/../../../../etc/passwd",
    "/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/figures%2f..%2f..%2f..%2fetc%2fpasswd",
    "/files/%252e%252e/%252e%252e/etc/passwd", "/files/figures/..%5c..%5c..%5cetc%5cpasswd",
    "/files/recipe.json%00.png", "/files/figures/escape.png", "/files/elsewhere/secret.txt", "/files/",
    "/files/figures", "/../../etc/passwd", "/static/../../../etc/passwd", "/static/%2e%2e/server.py",
])
def test_paths_outside_the_project_are_refused(project, dashboard, path: str) -> None:
    status, body = dashboard.get(path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body and b"not for the dashboard" not in body


def test_files_inside_the_project_are_served(project, dashboard) -> None:
    root = project["root"]
    status, body = dashboard.get("/files/recipe.json")
    assert status == 200 and body == (root / "recipe.json").read_bytes()
    status, body = dashboard.get("/files/figures/sizes.png")
    assert status == 200 and body == (root / "figures" / "sizes.png").read_bytes()
    status, body = dashboard.get("/files/model/%6cog.csv")  # %-encoded, still inside
    assert status == 200 and body == (root / "model" / "log.csv").read_bytes()


def test_only_reads(project, dashboard) -> None:
    for method in ("POST", "PUT", "DELETE"):
        conn = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
        conn.request(method, "/api/jobs", body=b"{}")
        assert conn.getresponse().status == 405
        conn.close()


def test_a_foreign_host_name_is_refused(project, dashboard) -> None:
    """Without a token the server answers loopback names only (a rebinding page cannot read it)."""
    assert dashboard.get("/api/jobs", {"Host": f"evil.example:{dashboard.port}"})[0] == 403
    assert dashboard.get("/api/jobs", {"Host": f"localhost:{dashboard.port}"})[0] == 200


def test_another_host_needs_a_token(project) -> None:
    run = subprocess.run([sys.executable, "-m", "dftflow", "dashboard", "-p", str(project["root"]), "--host",
                          "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "--token" in run.stderr


def test_with_a_token_every_request_carries_it(project, browser) -> None:
    server = Dashboard(project["root"], "--token", "s3cret-t0ken", "--poll", "1")
    try:
        assert server.url.endswith("?token=s3cret-t0ken")
        for path in ("/", "/api/jobs", "/files/recipe.json", "/static/app.js"):
            assert server.get(path)[0] == 403, path
            assert server.get(path + "?token=wrong")[0] == 403, path
            assert server.get(path + "?token=s3cret-t0ken")[0] == 200, path
        assert server.get("/api/jobs", {"X-Dftflow-Token": "s3cret-t0ken"})[0] == 200
        # the page passes the token on to its own requests: jobs and figures load
        browser.goto(server.url)
        browser.wait_for("document.querySelector('#jobs-count-COMPLETED')")
        browser.wait_for("""(() => { const imgs = Array.from(document.querySelectorAll('#funnel img'));
            return imgs.length && imgs.every((i) => i.complete && i.naturalWidth > 100); })()""")
    finally:
        server.stop()


def test_views_open_every_database_read_only(project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SQLite connection the views make is a ``mode=ro`` URI; a database without a writer is immutable."""
    import sqlite3

    from dftflow.dashboard import views

    opened: list[str] = []
    real = sqlite3.connect

    def spy(database, *args, **kwargs):
        opened.append(str(database) + (" [uri]" if kwargs.get("uri") else ""))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    monkeypatch.setattr(views, "_cache", {})
    root = project["root"]
    for view in (views.funnel, views.candidates, views.jobs, views.datasets, views.training, views.reports):
        view(root)
    names = {Path(o.split("?")[0].removeprefix("file:")).name for o in opened}
    assert names == {"catalog.sqlite", "jobs.sqlite", "manifest.sqlite"}
    assert all(o.startswith("file:") and "mode=ro" in o and o.endswith("[uri]") for o in opened), opened
    # jobs.sqlite has a writer (the test's queue, WAL present): a plain read-only reader; the others none
    assert all(("immutable=1" in o) == ("jobs.sqlite" not in o) for o in opened), opened


def test_a_read_only_connection_cannot_write(tmp_path: Path) -> None:
    import sqlite3

    from dftflow import readonly

    with sqlite3.connect(tmp_path / "a.sqlite") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES(1)")
    db.close()
    assert not (tmp_path / "a.sqlite-wal").exists()
    with readonly.reading(tmp_path / "a.sqlite") as ro:
        assert ro.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError):
            ro.execute("INSERT INTO t VALUES(2)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqlite"]  # nothing created beside it


def test_the_jobs_view_answers_while_a_writer_holds_the_queue(project, dashboard) -> None:
    """A build's open write transaction neither blocks the dashboard nor shows before it commits."""
    import sqlite3

    committed = project["jobs"].queue.counts()
    writer = sqlite3.connect(project["root"] / "jobs.sqlite", isolation_level=None, timeout=5)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE jobs SET state='FAILED', error='uncommitted' WHERE state='READY'")
        t = time.monotonic()
        status, body = dashboard.get("/api/jobs")
        assert status == 200 and time.monotonic() - t < 3
        assert json.loads(body)["counts"] == committed
    finally:
        writer.execute("ROLLBACK")
        writer.close()
